#!/usr/bin/env bash
# Profile paygate (bench config) under wrk load with perf (cpu-clock, 10 s); prints the temp dir
# holding perf.data and top_self.txt. Needs linux-perf; run after cargo build --release.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd); P=$ROOT/target/release/paygate
T=$(mktemp -d /tmp/pgprof.XXXX); cd $T
$P mock-psp --listen 127.0.0.1:0 --name sim --latency fixed:0 --success-rate 1.0 > sim.out & SIM=$!
sleep 0.5; SIMPORT=$(grep -oE '127\.0\.0\.1:[0-9]+' sim.out | cut -d: -f2)
KEY=prof-key; H=$(printf %s $KEY | sha256sum | cut -d' ' -f1)
sed -e "s|@SIMPORT@|$SIMPORT|g" -e "s|@JOURNAL@|$T/j.db|" -e "s|@KEYHASH@|$H|" $HERE/routes.toml.tmpl > routes.toml
$P --config routes.toml serve > pg.out 2>pg.err & PG=$!
sleep 1; URL=$(grep -oE 'http://[0-9.:]+' pg.out | head -1)
python3 - <<'PY'
base='{"amount":1999,"currency":"EUR","method":"card","country":"DE","capture":true,"card":{"number":"4111111111111111","exp_month":12,"exp_year":2030,"cvc":"123"},"reference":"'
pad=400-len(base)-2
open('body.json','w').write(base+("order-2026-11-25-web-checkout-"+"x"*400)[:pad]+'"}')
PY
cp $HERE/pay.lua closed.lua
wrk -t2 -c64 -d14s --timeout 5s -s closed.lua $URL/v1/payments -- /v1/payments 0 2 body.json prof $KEY > wrk.out 2>&1 &
W=$!
sleep 1.5
perf record -e cpu-clock -F 999 -g -p $PG -o perf.data -- sleep 10 2> perf.err || true
wait $W
grep RESULT wrk.out
grep VmHWM /proc/$PG/status
kill $PG $SIM; sleep 0.5
perf report -i perf.data --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^$' | grep -E '^ +[0-9]' | head -40 > top_self.txt
echo $T
