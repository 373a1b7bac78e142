#!/usr/bin/env bash
# Side-by-side load benchmark: the simulator directly, paygate (full pipeline), nginx and
# HAProxy, all in front of one `paygate mock-psp` on 127.0.0.1. Writes benches/RESULTS.md.
# See benches/LOAD.md. Every load loop is bounded by wrk's -d.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CORES=$(nproc)
WARMUP=${WARMUP:-3}            # seconds of closed-loop load before each target's runs
DURATION=${DURATION:-10}       # closed-loop throughput run, seconds
LAT_DURATION=${LAT_DURATION:-10} # fixed-rate latency run, seconds
CAL_DURATION=${CAL_DURATION:-5}  # nginx calibration run for the fixed rate
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-$CORES}
RATE=${RATE:-}                 # fixed rate; default: half of nginx's calibrated maximum
LOW_RATE=${LOW_RATE:-5000}     # a second fixed rate, one every target sustains
LOW_DURATION=${LOW_DURATION:-10}
API_KEY=bench-key-$$
OUT=${OUT:-$ROOT/benches/RESULTS.md}
# BEFORE=/path/to/paygate: a paygate binary built from an earlier commit, measured as the
# target "before" beside the current one (same config, same rounds), to price a change.
BEFORE=${BEFORE:-}
TARGETS="direct paygate nginx haproxy${BEFORE:+ before}"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- tools ------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet)
PAYGATE=$ROOT/target/release/paygate

TMP=$(mktemp -d /tmp/paygate-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

# first address printed on a line of FILE matching WORD, waited for up to 10 s
wait_addr() { # file pattern
  for _ in $(seq 100); do
    local a
    a=$(grep -m1 -oE "$2" "$1" 2>/dev/null || true)
    if [ -n "$a" ]; then echo "$a"; return 0; fi
    sleep 0.1
  done
  log "no address in $1:"; cat "$1" >&2; return 1
}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
fill() { sed -e "s|@SIMPORT@|$SIMPORT|g" -e "s|@TMP@|$TMP|g" -e "s|@WORKERS@|$CORES|g" "$@"; }

# --- request ----------------------------------------------------------------------------
# A 400-byte card payment as a merchant sends it; the reference is padded to the size.
mkbody() {
  local base='{"amount":1999,"currency":"EUR","method":"card","country":"DE","capture":true,"card":{"number":"4111111111111111","exp_month":12,"exp_year":2030,"cvc":"123"},"reference":"'
  local tail='"}'
  local pad=$((400 - ${#base} - ${#tail}))
  local ref="order-2026-11-25-web-checkout-"
  while [ ${#ref} -lt "$pad" ]; do ref="${ref}x"; done
  printf '%s%s%s' "$base" "${ref:0:$pad}" "$tail" > "$TMP/body.json"
}
mkbody
[ "$(wc -c < "$TMP/body.json")" -eq 400 ] || { log "body is not 400 bytes"; exit 1; }
cp "$HERE/pay.lua" "$TMP/closed.lua"
cat "$HERE/pay.lua" "$HERE/pace.lua" > "$TMP/paced.lua"

# --- the simulator ------------------------------------------------------------------------
"$PAYGATE" mock-psp --listen 127.0.0.1:0 --name sim --latency fixed:0 --success-rate 1.0 \
  > "$TMP/sim.out" 2>"$TMP/sim.err" &
PIDS+=($!)
SIMADDR=$(wait_addr "$TMP/sim.out" '127\.0\.0\.1:[0-9]+')
SIMPORT=${SIMADDR##*:}
log "simulator on $SIMADDR"

# --- nginx, HAProxy -------------------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx_body" "$TMP/nginx_proxy"
fill "$HERE/nginx.conf.tmpl" | sed "s|@PORT@|$NGINX_PORT|g" > "$TMP/nginx.conf"
"$NGINX" -p "$TMP" -c "$TMP/nginx.conf" 2>>"$TMP/nginx.err" &
PIDS+=($!)
HAPROXY_PORT=$(free_port)
fill "$HERE/haproxy.cfg.tmpl" | sed "s|@PORT@|$HAPROXY_PORT|g" > "$TMP/haproxy.cfg"
"$HAPROXY" -db -f "$TMP/haproxy.cfg" > "$TMP/haproxy.out" 2>&1 &
PIDS+=($!)
wait_port "$NGINX_PORT" || { log "nginx did not start"; cat "$TMP/nginx.err" >&2; exit 1; }
wait_port "$HAPROXY_PORT" || { log "haproxy did not start"; cat "$TMP/haproxy.out" >&2; exit 1; }

# --- paygate (started fresh for each round, fresh journal) --------------------------------
KEYHASH=$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)
PG_PID=; PG_URL=; PG_ADMIN=
start_paygate() { # round [binary]
  local dir=$TMP/paygate-$1 bin=${2:-$PAYGATE}
  rm -rf "$dir"
  mkdir -p "$dir"
  fill "$HERE/routes.toml.tmpl" | sed -e "s|@JOURNAL@|$dir/journal.db|" -e "s|@KEYHASH@|$KEYHASH|" > "$dir/routes.toml"
  "$bin" --config "$dir/routes.toml" check > /dev/null
  "$bin" --config "$dir/routes.toml" serve > "$dir/stdout" 2> "$dir/stderr" &
  PG_PID=$!
  PIDS+=($PG_PID)
  local line
  line=$(wait_addr "$dir/stdout" 'paygate listening on http://[0-9.:]+ \(admin http://[0-9.:]+\)')
  PG_URL=$(echo "$line" | grep -oE 'http://[0-9.:]+' | sed -n 1p)
  PG_ADMIN=$(echo "$line" | grep -oE 'http://[0-9.:]+' | sed -n 2p)
}
stop_paygate() {
  kill "$PG_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$PG_PID" 2>/dev/null || true
  wait "$PG_PID" 2>/dev/null || true
}

url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$SIMPORT/payments" ;;
    paygate|before) echo "$PG_URL/v1/payments" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/v1/payments" ;;
    haproxy) echo "http://127.0.0.1:$HAPROXY_PORT/v1/payments" ;;
  esac
}

# run_wrk target kind(closed|paced) seconds tag [rate] -> RESULT line
run_wrk() {
  local url path rate=0 script=$TMP/closed.lua
  url=$(url_of "$1"); path=/${url#http://*/}
  if [ "$2" = paced ]; then rate=${5:-$RATE}; script=$TMP/paced.lua; fi
  wrk -t "$THREADS" -c "$CONNS" -d "${3}s" --timeout 5s -s "$script" "$url" \
    -- "$path" "$rate" "$THREADS" "$TMP/body.json" "$4" "$API_KEY" > "$TMP/wrk-$4.out" 2>&1 || true
  grep -m1 '^RESULT' "$TMP/wrk-$4.out" || { log "wrk failed:"; cat "$TMP/wrk-$4.out" >&2; echo "RESULT requests=0"; }
}
field() { echo "$1" | grep -oE "(^| )$2=[0-9.]+" | cut -d= -f2; }
sim_reset() { curl -s -o /dev/null -X POST "http://127.0.0.1:$SIMPORT/_sim/reset" || true; }

# sanity: one request through each path
start_paygate 0
for t in direct paygate nginx haproxy; do
  code=$(curl -s -o "$TMP/check-$t.json" -w '%{http_code}' -X POST "$(url_of $t)" \
    -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: check-$t" --data-binary "@$TMP/body.json")
  log "check $t: HTTP $code"
  case $code in 200|201) ;; *) log "unexpected answer from $t:"; cat "$TMP/check-$t.json" >&2; exit 1 ;; esac
done
stop_paygate

# --- fixed rate: half of nginx's closed-loop maximum ---------------------------------------
if [ -z "$RATE" ]; then
  run_wrk nginx closed "$WARMUP" cal-warm >/dev/null
  r=$(run_wrk nginx closed "$CAL_DURATION" cal)
  NGINX_CAL=$(field "$r" rps)
  RATE=$(awk -v x="$NGINX_CAL" 'BEGIN{printf "%d", int(x/2/100)*100}')
  log "nginx calibration: $NGINX_CAL req/s -> fixed rate $RATE req/s"
else
  NGINX_CAL="(RATE given)"
fi

# --- rounds ---------------------------------------------------------------------------------
RAW=$TMP/raw.tsv
printf 'round\ttarget\trps\tthr_errors\tlat_rate\tp50_us\tp99_us\tp999_us\tlat_errors\trss_kib\tpg_statuses\tlow_p50_us\tlow_p99_us\tlow_p999_us\tlow_rate\tlow_errors\n' > "$RAW"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
is_paygate() { [ "$1" = paygate ] || [ "$1" = before ]; }
for round in $(seq "$REPEATS"); do
  for t in $TARGETS; do
    rss=-; statuses=-
    [ "$t" = paygate ] && start_paygate "$round"
    [ "$t" = before ] && start_paygate "$round-before" "$BEFORE"
    sim_reset
    run_wrk "$t" closed "$WARMUP" "r$round-$t-warm" > /dev/null
    sim_reset
    thr=$(run_wrk "$t" closed "$DURATION" "r$round-$t-thr")
    sim_reset
    lat=$(run_wrk "$t" paced "$LAT_DURATION" "r$round-$t-lat")
    sim_reset
    low=$(run_wrk "$t" paced "$LOW_DURATION" "r$round-$t-low" "$LOW_RATE")
    terr=$(( $(field "$thr" err_connect) + $(field "$thr" err_read) + $(field "$thr" err_write) + $(field "$thr" err_timeout) + $(field "$thr" non2xx) ))
    lerr=$(( $(field "$lat" err_connect) + $(field "$lat" err_read) + $(field "$lat" err_write) + $(field "$lat" err_timeout) + $(field "$lat" non2xx) ))
    lrate=$(awk -v n="$(field "$lat" requests)" -v d="$(field "$lat" duration_us)" 'BEGIN{printf "%.0f", n/(d/1e6)}')
    lowerr=$(( $(field "$low" err_connect) + $(field "$low" err_read) + $(field "$low" err_write) + $(field "$low" err_timeout) + $(field "$low" non2xx) ))
    lowrate=$(awk -v n="$(field "$low" requests)" -v d="$(field "$low" duration_us)" 'BEGIN{printf "%.0f", n/(d/1e6)}')
    if is_paygate "$t"; then
      rss=$(awk '/VmHWM/{print $2}' "/proc/$PG_PID/status")
      statuses=$(curl -s "$PG_ADMIN/metrics" | awk '/^paygate_http_requests_total/ {match($0,/status="[0-9]+"/); s=substr($0,RSTART+8,3); c[s]+=$NF} END{for(k in c) if (c[k]>0) printf "%s:%d ", k, c[k]}')
      stop_paygate
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$(field "$thr" rps)" "$terr" "$lrate" \
      "$(field "$lat" p50_us)" "$(field "$lat" p99_us)" "$(field "$lat" p999_us)" "$lerr" "$rss" "${statuses% }" \
      "$(field "$low" p50_us)" "$(field "$low" p99_us)" "$(field "$low" p999_us)" "$lowrate" "$lowerr" >> "$RAW"
    log "round $round $t: $(field "$thr" rps) req/s (errors $terr); at $lrate req/s p50 $(field "$lat" p50_us) us p99 $(field "$lat" p99_us) us p99.9 $(field "$lat" p999_us) us (errors $lerr); at $lowrate req/s p99 $(field "$low" p99_us) us (errors $lowerr) rss ${rss} KiB"
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ---------------------------------------------------------------------------------
med() { # target column -> median over rounds
  awk -F'\t' -v t="$1" -v c="$2" 'NR>1 && $2==t {print $c}' "$RAW" | sort -g | awk '{a[NR]=$1} END{if(NR%2) print a[(NR+1)/2]; else printf "%g\n", (a[NR/2]+a[NR/2+1])/2}'
}
declare -A M
for t in $TARGETS; do
  for c in 3 5 6 7 8 12 13 14 15; do M[$t,$c]=$(med "$t" "$c"); done
done
sum_col() { awk -F'\t' -v t="$1" -v c="$2" 'NR>1 && $2==t {s+=$c} END{print s+0}' "$RAW"; }
PG_ERR=$(( $(sum_col paygate 4) + $(sum_col paygate 9) + $(sum_col paygate 16) ))
PG_RSS=$(awk -F'\t' 'NR>1 && $2=="paygate" && $10>m {m=$10} END{print m+0}' "$RAW")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
ms() { awk -v u="$1" 'BEGIN{printf "%.3f", u/1000}'; }
verdict() { if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi; }
b1=$(awk -v p="${M[paygate,3]}" -v n="${M[nginx,3]}" 'BEGIN{print (p >= 0.9*n)?1:0}')
b2=$(awk -v p="${M[paygate,7]}" -v n="${M[nginx,7]}" 'BEGIN{print (p <= n+1000)?1:0}')
b3=$(awk -v p="${M[paygate,8]}" -v n="${M[nginx,8]}" 'BEGIN{print (p <= 2*n)?1:0}')
# A target that cannot sustain the fixed rate has no latency at that rate to compare: its
# closed-loop queue grows without bound, so the latency bars fail for it.
sustained=$(awk -v a="${M[paygate,5]}" -v r="$RATE" 'BEGIN{print (a >= 0.95*r)?1:0}')
why=""
if [ "$sustained" = 0 ]; then b2=0; b3=0; why=" (paygate sustained only ${M[paygate,5]} of $RATE req/s, so it has no latency at that rate; the figures are at saturation)"; fi
l2=$(awk -v p="${M[paygate,13]}" -v n="${M[nginx,13]}" 'BEGIN{print (p <= n+1000)?1:0}')
l3=$(awk -v p="${M[paygate,14]}" -v n="${M[nginx,14]}" 'BEGIN{print (p <= 2*n)?1:0}')
b4=$(awk -v r="$PG_RSS" 'BEGIN{print (r < 65536)?1:0}')
b5=$([ "$PG_ERR" -eq 0 ] && echo 1 || echo 0)

{
  echo "# Load benchmark results"
  echo
  echo "Written by \`benches/load/run.sh\` (see \`benches/LOAD.md\`). Do not edit by hand."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- Load average (1/5/15 min) before the rounds: $LOAD_START; after: $LOAD_END (load generator, targets and simulator share the $CORES cores; other work may have been running)"
  echo "- paygate $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes)'), $(nginx -v 2>&1 | cut -d: -f2 | sed 's/^ //'), HAProxy $($HAPROXY -v | head -1 | awk '{print $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "- Load: wrk, $THREADS threads, $CONNS connections, \`POST\` with a 400-byte JSON body, \`Authorization: Bearer\`, \`Content-Type\`, a unique \`Idempotency-Key\` per request. Per target and round: ${WARMUP} s warm-up, ${DURATION} s closed-loop throughput run, ${LAT_DURATION} s fixed-rate latency run at $RATE req/s (half of nginx's ${NGINX_CAL} req/s calibration run; wrk with a paced Lua schedule, see LOAD.md). $REPEATS rounds, targets interleaved; medians below."
  [ -n "$BEFORE" ] && echo "- before: \`$BEFORE\` ($("$BEFORE" --version 2>/dev/null || echo 'an earlier build')), the same config and rounds as paygate"
  echo "- Upstream: one \`paygate mock-psp --latency fixed:0 --success-rate 1.0\`; direct = \`POST /payments\` on it; nginx and HAProxy map \`/v1/payments\` to \`/payments\`; paygate routes over 3 channels all pointing at it (auth, rate limits, idempotency, adaptive routing, metrics, SQLite journal \`sync = \"batch\"\`), restarted with a fresh journal each round."
  echo
  echo "## Medians"
  echo
  echo "| target | throughput req/s | latency run: achieved req/s | p50 ms | p99 ms | p99.9 ms |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for t in $TARGETS; do
    echo "| $t | ${M[$t,3]} | ${M[$t,5]} | $(ms "${M[$t,6]}") | $(ms "${M[$t,7]}") | $(ms "${M[$t,8]}") |"
  done
  echo
  echo "| ratio | throughput | p50 | p99 | p99.9 |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for b in nginx haproxy direct${BEFORE:+ before}; do
    echo "| paygate/$b | $(ratio "${M[paygate,3]}" "${M[$b,3]}")x | $(ratio "${M[paygate,6]}" "${M[$b,6]}")x | $(ratio "${M[paygate,7]}" "${M[$b,7]}")x | $(ratio "${M[paygate,8]}" "${M[$b,8]}")x |"
  done
  echo
  awk -F'\t' -v r="$RATE" 'NR>1 && $5 < 0.95*r {print $2}' "$RAW" | sort -u | while read -r t; do
    echo "Note: $t did not reach the fixed rate of $RATE req/s in its latency runs (it is above its closed-loop maximum), so its latency figures are those of a saturated server with all $CONNS connections busy; wrk measures from the actual send, so queueing before the send (coordinated omission) is not included and the true figures at that rate are worse."
    echo
  done
  echo "### Latency at $LOW_RATE req/s, a rate every target sustains"
  echo
  echo "A second paced run (${LOW_DURATION} s) per target and round, so that paygate's latency can be compared where it is not saturated."
  echo
  echo "| target | achieved req/s | p50 ms | p99 ms | p99.9 ms |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for t in $TARGETS; do
    echo "| $t | ${M[$t,15]} | $(ms "${M[$t,12]}") | $(ms "${M[$t,13]}") | $(ms "${M[$t,14]}") |"
  done
  echo
  echo "paygate peak RSS (VmHWM, highest of the rounds): $(awk -v k="$PG_RSS" 'BEGIN{printf "%.1f MiB", k/1024}')"
  echo
  echo "## Bars"
  echo
  echo "| bar | measured | result |"
  echo "| --- | --- | --- |"
  echo "| paygate >= 0.9x nginx req/s | $(ratio "${M[paygate,3]}" "${M[nginx,3]}")x | $(verdict "$b1") |"
  echo "| paygate p99 <= nginx p99 + 1 ms | $(ms "${M[paygate,7]}") ms vs $(ms "${M[nginx,7]}") + 1 ms | $(verdict "$b2")$why |"
  echo "| paygate p99.9 <= 2x nginx p99.9 | $(ms "${M[paygate,8]}") ms vs 2 x $(ms "${M[nginx,8]}") ms | $(verdict "$b3")$why |"
  echo "| (at $LOW_RATE req/s, not a bar) paygate p99 <= nginx p99 + 1 ms | $(ms "${M[paygate,13]}") ms vs $(ms "${M[nginx,13]}") + 1 ms | $(verdict "$l2") |"
  echo "| (at $LOW_RATE req/s, not a bar) paygate p99.9 <= 2x nginx p99.9 | $(ms "${M[paygate,14]}") ms vs 2 x $(ms "${M[nginx,14]}") ms | $(verdict "$l3") |"
  echo "| paygate peak RSS < 64 MiB | $(awk -v k="$PG_RSS" 'BEGIN{printf "%.1f MiB", k/1024}') | $(verdict "$b4") |"
  echo "| no request errors in any paygate run | $PG_ERR errors | $(verdict "$b5") |"
  echo
  echo "## Every run"
  echo
  echo "Errors: connect/read/write errors, timeouts (5 s) and non-2xx answers as wrk counts them. paygate statuses: \`paygate_http_requests_total\` by status over the round (warm-up included)."
  echo
  echo "| round | target | throughput req/s | errors | latency run req/s | p50 ms | p99 ms | p99.9 ms | errors | at $LOW_RATE/s: p50 ms | p99 ms | p99.9 ms | errors | paygate VmHWM | paygate statuses |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  awk -F'\t' 'NR>1 {rss=($10=="-")?"-":sprintf("%.1f MiB",$10/1024); printf "| %s | %s | %s | %s | %s | %.3f | %.3f | %.3f | %s | %.3f | %.3f | %.3f | %s | %s | %s |\n", $1,$2,$3,$4,$5,$6/1000,$7/1000,$8/1000,$9,$12/1000,$13/1000,$14/1000,$16,rss,$11}' "$RAW"
} > "$OUT"
log "wrote $OUT"
cat "$OUT"
