#!/usr/bin/env bash
# Instructions per payment: the stable yardstick of issue 15. valgrind's callgrind counts the
# instructions a process executes, the same for the same binary and input whatever else the
# machine is doing, where seconds are not. Counts, under callgrind, one at a time:
#   paygate - the full pipeline of benches/load/routes.toml.tmpl (journal `sync = "batch"`)
#   nginx   - a bare forward to the same simulator (benches/load/nginx.conf.tmpl, one worker)
# For each: warm up, zero the counters (callgrind_control -z), run the load for LOAD_SECONDS,
# dump (callgrind_control -d), and divide the dump's instruction total by the requests
# answered in that window (paygate's own payment counter; wrk's count for nginx). Every
# thread of the process counts: the journal writer and SQLite included. The simulator and
# wrk run natively and are not counted. Under callgrind paygate answers a few hundred
# payments a second, so the journal's batches are small: compare counts of this script with
# each other, not with a full-speed run, and at a similar number of requests counted (the
# batches, so the commits per payment, follow the rate callgrind reaches, which a busy machine
# lowers). Prints a table; `OUT=file` writes it there too
# (benches/INSTRUCTIONS.md). Every load loop is bounded by wrk's -d.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LOAD_SECONDS=${LOAD_SECONDS:-10}
WARMUP=${WARMUP:-5}
CONNS=${CONNS:-4}
API_KEY=bench-key-$$
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# PAYGATE=/path/to/paygate counts that build (an earlier commit's, to price a change).
if [ -z "${PAYGATE:-}" ]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet)
  PAYGATE=$ROOT/target/release/paygate
fi
TMP=$(mktemp -d /tmp/paygate-instructions.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

wait_line() { # file pattern seconds
  for _ in $(seq $(( ${3:-10} * 10 ))); do
    grep -m1 -oE "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing matching $2 in $1:"; cat "$1" >&2; return 1
}
wait_port() { # port seconds
  for _ in $(seq $(( ${2:-10} * 10 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The 400-byte payment of run.sh, a unique Idempotency-Key each (pay.lua).
base='{"amount":1999,"currency":"EUR","method":"card","country":"DE","capture":true,"card":{"number":"4111111111111111","exp_month":12,"exp_year":2030,"cvc":"123"},"reference":"'
ref="order-2026-11-25-web-checkout-"
while [ $(( ${#base} + ${#ref} + 2 )) -lt 400 ]; do ref="${ref}x"; done
printf '%s%s"}' "$base" "$ref" > "$TMP/body.json"

"$PAYGATE" mock-psp --listen 127.0.0.1:0 --name sim --latency fixed:0 --success-rate 1.0 \
  > "$TMP/sim.out" 2>"$TMP/sim.err" &
PIDS+=($!)
SIMADDR=$(wait_line "$TMP/sim.out" '127\.0\.0\.1:[0-9]+')
SIMPORT=${SIMADDR##*:}

load() { # url seconds tag -> wrk's RESULT line
  wrk -t 1 -c "$CONNS" -d "${2}s" --timeout 10s -s "$HERE/pay.lua" "$1" \
    -- /v1/payments 0 1 "$TMP/body.json" "$3" "$API_KEY" > "$TMP/wrk-$3.out" 2>&1 || true
  grep -m1 '^RESULT' "$TMP/wrk-$3.out" || echo "RESULT requests=0"
}
field() { echo "$1" | grep -oE "(^| )$2=[0-9.]+" | cut -d= -f2; }
# The instruction total of the newest dump of process $1.
dumped_ir() {
  local file
  file=$(ls -t "$TMP"/callgrind.out."$1"* | head -1)
  awk '/^(summary|totals):/ {print $2; exit}' "$file"
}
# The instructions spent in SHA-256 blocks (inclusive) in the newest dump of process $1:
# valgrind hides the CPU's SHA extensions, so the sha2 crate runs its software rounds here
# where a native run uses SHA-NI; reported apart so the count can be read both ways.
dumped_sha_ir() {
  local file
  file=$(ls -t "$TMP"/callgrind.out."$1"* | head -1)
  callgrind_annotate --inclusive=yes --threshold=100 "$file" 2>/dev/null \
    | awk '/sha2::sha256::compress256 / && !found {gsub(",", "", $1); print $1; found=1} END {if (!found) print 0}'
}

# --- paygate ------------------------------------------------------------------------------
KEYHASH=$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)
# count_paygate binary tag: sets IR, SHA_IR and N (instructions, of which SHA-256, payments).
count_paygate() {
  local dir=$TMP/$2 line url admin n0 n1 r vg
  mkdir -p "$dir"
  sed -e "s|@SIMPORT@|$SIMPORT|g" -e "s|@JOURNAL@|$dir/journal.db|" -e "s|@KEYHASH@|$KEYHASH|" \
    "$HERE/routes.toml.tmpl" > "$dir/routes.toml"
  "$1" --config "$dir/routes.toml" check > /dev/null
  valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$TMP/callgrind.out.%p" \
    "$1" --config "$dir/routes.toml" serve > "$dir/paygate.out" 2> "$dir/paygate.err" &
  vg=$!
  PIDS+=($vg)
  line=$(wait_line "$dir/paygate.out" 'paygate listening on http://[0-9.:]+ \(admin http://[0-9.:]+\)' 120)
  url=$(echo "$line" | grep -oE 'http://[0-9.:]+' | sed -n 1p)
  admin=$(echo "$line" | grep -oE 'http://[0-9.:]+' | sed -n 2p)
  payments() { curl -s "$admin/metrics" | awk '/^paygate_payments_total/ {s+=$NF} END{print s+0}'; }
  log "$2 under callgrind: warm-up ${WARMUP} s"
  load "$url/v1/payments" "$WARMUP" "$2-warm" > /dev/null
  n0=$(payments)
  callgrind_control -z "$vg" > /dev/null 2>&1
  r=$(load "$url/v1/payments" "$LOAD_SECONDS" "$2")
  callgrind_control -d "$vg" > /dev/null 2>&1
  n1=$(payments)
  sleep 1
  IR=$(dumped_ir "$vg")
  SHA_IR=$(dumped_sha_ir "$vg")
  N=$(( n1 - n0 ))
  log "$2: $IR instructions over $N payments (wrk: $(field "$r" requests) answers, $(field "$r" non2xx) not 2xx)"
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
}
count_paygate "$PAYGATE" paygate
PAYGATE_IR=$IR PAYGATE_SHA_IR=$SHA_IR PAYGATE_N=$N
# BEFORE=/path/to/paygate: an earlier build counted the same way, in the same run (named in the
# table by BEFORE_LABEL, if given).
if [ -n "${BEFORE:-}" ]; then
  count_paygate "$BEFORE" before
  BEFORE_IR=$IR BEFORE_SHA_IR=$SHA_IR BEFORE_N=$N
fi

# --- nginx --------------------------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx_body" "$TMP/nginx_proxy"
sed -e "s|@SIMPORT@|$SIMPORT|g" -e "s|@TMP@|$TMP|g" -e "s|@WORKERS@|1|" -e "s|@PORT@|$NGINX_PORT|g" \
  -e 's|^daemon off;|daemon off;\nmaster_process off;|' "$HERE/nginx.conf.tmpl" > "$TMP/nginx.conf"
valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$TMP/callgrind.out.%p" \
  "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" 2>>"$TMP/nginx.err" &
VG=$!
PIDS+=($VG)
wait_port "$NGINX_PORT" 120 || { log "nginx did not start"; cat "$TMP/nginx.err" >&2; exit 1; }
log "nginx under callgrind: warm-up ${WARMUP} s"
load "http://127.0.0.1:$NGINX_PORT/v1/payments" "$WARMUP" nginx-warm > /dev/null
callgrind_control -z "$VG" > /dev/null 2>&1
r=$(load "http://127.0.0.1:$NGINX_PORT/v1/payments" "$LOAD_SECONDS" nginx)
callgrind_control -d "$VG" > /dev/null 2>&1
sleep 1
NGINX_IR=$(dumped_ir "$VG")
NGINX_N=$(field "$r" requests)
log "nginx: $NGINX_IR instructions over $NGINX_N requests ($(field "$r" non2xx) not 2xx)"

per() { awk -v i="$1" -v n="$2" 'BEGIN{ if (n > 0) printf "%.0f", i / n; else print "-" }'; }
P=$(per "$PAYGATE_IR" "$PAYGATE_N")
N=$(per "$NGINX_IR" "$NGINX_N")
S=$(per "$PAYGATE_SHA_IR" "$PAYGATE_N")
table=$(
  echo "| target | instructions per request | of which SHA-256 in software | requests counted | ratio to nginx |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  echo "| paygate (full pipeline, \`sync = \"batch\"\`) | $P | $S | $PAYGATE_N | $(awk -v a="$P" -v b="$N" 'BEGIN{printf "%.1fx", a/b}') |"
  if [ -n "${BEFORE:-}" ]; then
    B=$(per "$BEFORE_IR" "$BEFORE_N")
    echo "| before: ${BEFORE_LABEL:-\`$BEFORE\`} (same config) | $B | $(per "$BEFORE_SHA_IR" "$BEFORE_N") | $BEFORE_N | $(awk -v a="$B" -v b="$N" 'BEGIN{printf "%.1fx", a/b}') |"
  fi
  echo "| nginx (bare forward, one worker) | $N | - | $NGINX_N | 1 |"
)
echo "$table"
if [ -n "${OUT:-}" ]; then
  {
    echo "Instructions per request, \`benches/load/instructions.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), paygate $(cd "$ROOT" && git rev-parse --short HEAD), ${LOAD_SECONDS} s of wrk with $CONNS connections under callgrind"
    echo
    echo "$table"
  } > "$OUT"
fi
