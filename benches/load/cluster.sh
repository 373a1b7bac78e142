#!/usr/bin/env bash
# Cluster mode beside single-node, in one run: the same paygate pipeline in front of one
# `paygate mock-psp`, as
#   single    - the shipped mode: SQLite journal, limits and keys in process
#   redis     - [cluster] on the machine's Redis (shared limits and key claims), SQLite journal
#   redis+pg  - [cluster] on Redis and [journal] url on the machine's PostgreSQL
# Per target and round: a closed-loop throughput run and a fixed-rate latency run (wrk with
# benches/load/pay.lua and pace.lua), targets interleaved, medians over the rounds. Also counts
# the Redis commands and PostgreSQL transactions per payment from the servers' own counters.
# Writes benches/CLUSTER.md. Every load loop is bounded by wrk's -d. See benches/LOAD.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CORES=$(nproc)
WARMUP=${WARMUP:-3}
DURATION=${DURATION:-10}
LAT_DURATION=${LAT_DURATION:-10}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-$CORES}
RATE=${RATE:-500}              # the fixed rate of the latency run: every target sustains it, far from saturation
REDIS=${REDIS:-127.0.0.1:6379}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
API_KEY=bench-key-$$
OUT=${OUT:-$ROOT/benches/CLUSTER.md}
TARGETS="single redis redis+pg"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
redis-cli -u "redis://$REDIS" ping >/dev/null || { log "Redis is not answering on $REDIS"; exit 1; }
pg_isready -q -d "$PG_URL" || { log "PostgreSQL is not answering on $PG_URL"; exit 1; }

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet)
PAYGATE=$ROOT/target/release/paygate
TMP=$(mktemp -d /tmp/paygate-cluster.XXXXXX)
PIDS=()
SCHEMAS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for s in "${SCHEMAS[@]:-}"; do [ -n "$s" ] && psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

wait_line() { # file pattern
  for _ in $(seq 100); do
    grep -m1 -oE "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing matching $2 in $1:"; cat "$1" >&2; return 1
}

# The 400-byte payment of run.sh.
base='{"amount":1999,"currency":"EUR","method":"card","country":"DE","capture":true,"card":{"number":"4111111111111111","exp_month":12,"exp_year":2030,"cvc":"123"},"reference":"'
ref="order-2026-11-25-web-checkout-"
while [ $(( ${#base} + ${#ref} + 2 )) -lt 400 ]; do ref="${ref}x"; done
printf '%s%s"}' "$base" "$ref" > "$TMP/body.json"
cp "$HERE/pay.lua" "$TMP/closed.lua"
cat "$HERE/pay.lua" "$HERE/pace.lua" > "$TMP/paced.lua"

"$PAYGATE" mock-psp --listen 127.0.0.1:0 --name sim --latency fixed:0 --success-rate 1.0 \
  > "$TMP/sim.out" 2>"$TMP/sim.err" &
PIDS+=($!)
SIMADDR=$(wait_line "$TMP/sim.out" '127\.0\.0\.1:[0-9]+')
SIMPORT=${SIMADDR##*:}
KEYHASH=$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)

GW_PID=; GW_URL=; GW_ADMIN=
start() { # target round
  local dir=$TMP/$1-$2 name
  name=bench_$$_${2}_$(echo "$1" | tr -c 'a-z\n' '_')
  mkdir -p "$dir"
  sed -e "s|@SIMPORT@|$SIMPORT|g" -e "s|@JOURNAL@|$dir/journal.db|" -e "s|@KEYHASH@|$KEYHASH|" \
    "$HERE/routes.toml.tmpl" > "$dir/routes.toml"
  case $1 in
    redis|redis+pg)
      printf '\n[cluster]\nredis_url = "redis://%s"\nkey_prefix = "%s:"\n' "$REDIS" "$name" >> "$dir/routes.toml" ;;
  esac
  if [ "$1" = redis+pg ]; then
    SCHEMAS+=("$name")
    # The [journal] table of the template gains the database: its path is then unused.
    sed -i "s|^\[journal\]|[journal]\nurl = \"$PG_URL\"\nschema = \"$name\"|" "$dir/routes.toml"
  fi
  "$PAYGATE" --config "$dir/routes.toml" check > /dev/null
  "$PAYGATE" --config "$dir/routes.toml" serve > "$dir/stdout" 2> "$dir/stderr" &
  GW_PID=$!
  PIDS+=($GW_PID)
  local line
  line=$(wait_line "$dir/stdout" 'paygate listening on http://[0-9.:]+ \(admin http://[0-9.:]+\)')
  GW_URL=$(echo "$line" | grep -oE 'http://[0-9.:]+' | sed -n 1p)
  GW_ADMIN=$(echo "$line" | grep -oE 'http://[0-9.:]+' | sed -n 2p)
}
stop() {
  kill "$GW_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
}
run_wrk() { # kind seconds tag -> RESULT line
  local rate=0 script=$TMP/closed.lua
  if [ "$1" = paced ]; then rate=$RATE; script=$TMP/paced.lua; fi
  wrk -t "$THREADS" -c "$CONNS" -d "${2}s" --timeout 5s -s "$script" "$GW_URL/v1/payments" \
    -- /v1/payments "$rate" "$THREADS" "$TMP/body.json" "$3" "$API_KEY" > "$TMP/wrk-$3.out" 2>&1 || true
  grep -m1 '^RESULT' "$TMP/wrk-$3.out" || echo "RESULT requests=0"
}
field() { echo "$1" | grep -oE "(^| )$2=[0-9.]+" | cut -d= -f2; }
# Round trips: paygate sends Redis only scripts (EVALSHA, EVAL when a script is not cached
# yet); the commands a script runs inside Redis are counted apart by INFO and left out here.
redis_calls() { redis-cli -u "redis://$REDIS" info commandstats | awk -F'[:=,]' '/^cmdstat_(evalsha|eval)[:]/ {s+=$3} END{print s+0}'; }
pg_commits() { psql -tA "$PG_URL" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"; }
payments() { curl -s "$GW_ADMIN/metrics" | awk '/^paygate_payments_total/ {s+=$NF} END{print s+0}'; }
# The buckets of paygate_cluster_call_duration_seconds for one feature: "le count" lines.
redis_buckets() { curl -s "$GW_ADMIN/metrics" | awk -v f="$1" 'index($0, "paygate_cluster_call_duration_seconds_bucket{") == 1 && index($0, "feature=\"" f "\"") { match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); print le, $NF }'; }
# The 99th percentile in microseconds of the calls between two bucket snapshots (files), linear
# within its bucket; "-" when there were none.
redis_p99_us() {
  join <(sort "$1") <(sort "$2") | awk '{ le = ($1 == "+Inf") ? 1e9 : $1; print le, $3 - $2 }' | sort -g | awk '
    { le[NR] = $1; n[NR] = $2 } END {
      total = n[NR]; if (total <= 0) { print "-"; exit }
      want = 0.99 * total; lo = 0; below = 0
      for (i = 1; i <= NR; i++) { if (n[i] >= want) { frac = (n[i] > below) ? (want - below) / (n[i] - below) : 1; printf "%.0f\n", (lo + (le[i] - lo) * frac) * 1e6; exit } lo = le[i]; below = n[i] }
    }'
}
# CPU time of the paygate replica alone (user + system, all threads), in microseconds: what one
# replica costs per payment wherever its Redis and PostgreSQL run.
TICK=$(getconf CLK_TCK)
replica_cpu_us() { awk -v t="$TICK" '{ sub(/^.*\) /, ""); printf "%d\n", ($12 + $13) * 1000000 / t }' "/proc/$GW_PID/stat"; }

RAW=$TMP/raw.tsv
printf 'round\ttarget\trps\terrors\tp50_us\tp99_us\tp999_us\tredis_per_payment\tpg_per_payment\tcpu_us_per_payment\tredis_p99_limits_us\tredis_p99_claim_us\n' > "$RAW"
for round in $(seq "$REPEATS"); do
  for t in $TARGETS; do
    start "$t" "$round"
    run_wrk closed "$WARMUP" "r$round-$t-warm" > /dev/null
    r0=$(redis_calls); c0=$(pg_commits); n0=$(payments); u0=$(replica_cpu_us)
    thr=$(run_wrk closed "$DURATION" "r$round-$t-thr")
    r1=$(redis_calls); c1=$(pg_commits); n1=$(payments); u1=$(replica_cpu_us)
    redis_buckets rate_limits > "$TMP/rl0"; redis_buckets idempotency > "$TMP/id0"
    lat=$(run_wrk paced "$LAT_DURATION" "r$round-$t-lat")
    redis_buckets rate_limits > "$TMP/rl1"; redis_buckets idempotency > "$TMP/id1"
    rlp=$(redis_p99_us "$TMP/rl0" "$TMP/rl1"); idp=$(redis_p99_us "$TMP/id0" "$TMP/id1")
    errors=$(( $(field "$thr" err_connect) + $(field "$thr" err_read) + $(field "$thr" err_timeout) + $(field "$thr" non2xx) + $(field "$lat" non2xx) + $(field "$lat" err_timeout) ))
    per() { awk -v d="$1" -v n="$2" 'BEGIN{ if (n > 0) printf "%.2f", d/n; else print "-" }'; }
    rpp=$(per $((r1 - r0)) $((n1 - n0)))
    ppp=$(per $((c1 - c0)) $((n1 - n0)))
    cpp=$(per $((u1 - u0)) $((n1 - n0)))
    stop
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$(field "$thr" rps)" "$errors" \
      "$(field "$lat" p50_us)" "$(field "$lat" p99_us)" "$(field "$lat" p999_us)" "$rpp" "$ppp" "$cpp" "$rlp" "$idp" >> "$RAW"
    log "round $round $t: $(field "$thr" rps) req/s; at $RATE req/s p50 $(field "$lat" p50_us) us p99 $(field "$lat" p99_us) us; errors $errors; Redis round trips/payment $rpp (server-wide), PostgreSQL transactions/payment $ppp (database-wide), replica CPU $cpp us/payment, Redis p99 at $RATE req/s $rlp us (limits) $idp us (claim)"
  done
done

med() { awk -F'\t' -v t="$1" -v c="$2" 'NR>1 && $2==t {print $c}' "$RAW" | sort -g | awk '{a[NR]=$1} END{if(NR%2) print a[(NR+1)/2]; else printf "%g\n", (a[NR/2]+a[NR/2+1])/2}'; }
declare -A M
for t in $TARGETS; do for c in 3 4 5 6 7 8 9 10 11 12; do M[$t,$c]=$(med "$t" "$c"); done; done
# The p99 Redis adds end to end: the median over the rounds of (redis - single) in each round.
paired=$(awk -F'\t' 'NR>1 {p[$1,$2]=$6; r[$1]=1} END {for (k in r) print p[k,"redis"] - p[k,"single"]}' "$RAW" | sort -g | awk '{a[NR]=$1} END{if(NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}')
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
ms() { awk -v u="$1" 'BEGIN{printf "%.3f", u/1000}'; }
pass() { if awk "BEGIN{exit !($1)}"; then echo PASS; else echo FAIL; fi; }
{
  echo "# Cluster mode against single-node"
  echo
  echo "Written by \`benches/load/cluster.sh\`. Do not edit by hand."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); paygate $(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "- Machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); wrk, Redis, PostgreSQL, paygate and the simulator share them"
  echo "- Load: wrk $THREADS threads, $CONNS connections, the 400-byte payment of run.sh with a unique Idempotency-Key each; per target and round ${WARMUP} s warm-up, ${DURATION} s closed loop, ${LAT_DURATION} s at $RATE req/s; $REPEATS rounds, targets interleaved; medians"
  echo "- Pipeline: benches/load/routes.toml.tmpl (auth, rate limits, idempotency, adaptive routing over 3 channels, journal \`sync = \"batch\"\`); redis adds \`[cluster]\`, redis+pg also \`[journal] url\`"
  echo
  echo "| target | throughput req/s (all on these cores) | p50 ms | p99 ms | p99.9 ms | errors | Redis round trips / payment | PostgreSQL transactions / payment | replica CPU µs / payment |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for t in $TARGETS; do
    echo "| $t | ${M[$t,3]} | $(ms "${M[$t,5]}") | $(ms "${M[$t,6]}") | $(ms "${M[$t,7]}") | ${M[$t,4]} | ${M[$t,8]} | ${M[$t,9]} | ${M[$t,10]} |"
  done
  echo
  echo "| bar | figure | verdict |"
  echo "| --- | ---: | --- |"
  echo "| redis throughput >= 0.7x single, all on these cores | $(ratio "${M[redis,3]}" "${M[single,3]}")x | $(pass "${M[redis,3]} >= 0.7 * ${M[single,3]}") |"
  echo "| redis+pg throughput >= 0.7x single, all on these cores | $(ratio "${M[redis+pg,3]}" "${M[single,3]}")x | $(pass "${M[redis+pg,3]} >= 0.7 * ${M[single,3]}") |"
  echo "| redis per-replica throughput (single's CPU per payment / its own) >= 0.7x | $(ratio "${M[single,10]}" "${M[redis,10]}")x | $(pass "${M[single,10]} >= 0.7 * ${M[redis,10]}") |"
  echo "| redis+pg per-replica throughput (single's CPU per payment / its own) >= 0.7x | $(ratio "${M[single,10]}" "${M[redis+pg,10]}")x | $(pass "${M[single,10]} >= 0.7 * ${M[redis+pg,10]}") |"
  echo "| p99 added by Redis < 1 ms: p99 of its rate-limit call + p99 of its claim at $RATE req/s (redis) | $(ms "$(awk -v a="${M[redis,11]}" -v b="${M[redis,12]}" 'BEGIN{print a + b}')") ms | $(pass "${M[redis,11]} + ${M[redis,12]} < 1000") |"
  echo
  echo "The p99 of a payment's two Redis round trips is at most the sum of the two calls' p99s, as"
  echo "paygate times them (\`paygate_cluster_call_duration_seconds\`, its own scheduling included)."
  echo "End to end, the p99 at $RATE req/s of redis minus single's, paired within each round, has a median"
  echo "of $(ms "$paired") ms over the rounds; the spread of single's own p99 from round to round"
  echo "($(awk -F'\t' 'NR>1 && $2=="single" {printf "%s%.1f", s, $6/1000; s=", "}' "$RAW") ms) shows how much of that is the machine."
  echo
  echo "Redis round trips per payment are the scripts (EVALSHA, EVAL) in \`INFO commandstats\` over"
  echo "the closed-loop run, PostgreSQL transactions (commits of the writer and reads, each read"
  echo "being its own transaction) from \`pg_stat_database\`; every client of that Redis or database"
  echo "counts. Replica CPU is the paygate replica's own user and system time (\`/proc/<pid>/stat\`) over the"
  echo "closed-loop run per payment: with Redis and PostgreSQL on machines of their own, as in production,"
  echo "a replica's throughput is its cores divided by it. Here Redis, PostgreSQL, wrk and the simulator"
  echo "take their CPU from the same two cores, which the first throughput column pays for. Per-round figures:"
  echo
  echo '```'
  cat "$RAW"
  echo '```'
} > "$OUT"
log "wrote $OUT"
