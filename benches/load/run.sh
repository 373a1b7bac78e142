#!/usr/bin/env bash
# Side-by-side load benchmark: the simulator directly, paygate (full pipeline; journal
# sync = "batch" and sync = "async"), nginx and HAProxy, all in front of one
# `paygate mock-psp` on 127.0.0.1. Writes benches/RESULTS.md with issue 15's bars:
# throughput against nginx, CPU per request, latency at a paced LOW_RATE against nginx
# plus the disk's fdatasync, peak RSS, errors. See benches/LOAD.md.
# Every load loop is bounded by wrk's -d, the fdatasync probe by its iteration count.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CORES=$(nproc)
CLK_TCK=$(getconf CLK_TCK)
WARMUP=${WARMUP:-3}            # seconds of closed-loop load before each target's runs
DURATION=${DURATION:-10}       # closed-loop throughput run (and CPU per request), seconds
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-64}
THREADS=${THREADS:-$CORES}
LOW_RATE=${LOW_RATE:-5000}     # paced latency run, a rate every target sustains
LOW_DURATION=${LOW_DURATION:-10}
FSYNC_ITERS=${FSYNC_ITERS:-2000} # 4 KiB write + fdatasync calls per disk probe
API_KEY=bench-key-$$
OUT=${OUT:-$ROOT/benches/RESULTS.md}
# BEFORE=/path/to/paygate: a paygate binary built from an earlier commit, measured as the
# target "before" beside the current one (batch config, same rounds), to price a change.
BEFORE=${BEFORE:-}
TARGETS="direct paygate paygate-async nginx haproxy${BEFORE:+ before}"

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
SIM_PID=$!
PIDS+=("$SIM_PID")
SIMADDR=$(wait_addr "$TMP/sim.out" '127\.0\.0\.1:[0-9]+')
SIMPORT=${SIMADDR##*:}
log "simulator on $SIMADDR"

# --- nginx, HAProxy -------------------------------------------------------------------------
# Both run in the foreground (nginx `daemon off`, HAProxy -db), so $! is nginx's master
# (its workers are its children) and HAProxy's only process.
NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx_body" "$TMP/nginx_proxy"
fill "$HERE/nginx.conf.tmpl" | sed "s|@PORT@|$NGINX_PORT|g" > "$TMP/nginx.conf"
"$NGINX" -p "$TMP" -c "$TMP/nginx.conf" 2>>"$TMP/nginx.err" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
HAPROXY_PORT=$(free_port)
fill "$HERE/haproxy.cfg.tmpl" | sed "s|@PORT@|$HAPROXY_PORT|g" > "$TMP/haproxy.cfg"
"$HAPROXY" -db -f "$TMP/haproxy.cfg" > "$TMP/haproxy.out" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_port "$NGINX_PORT" || { log "nginx did not start"; cat "$TMP/nginx.err" >&2; exit 1; }
wait_port "$HAPROXY_PORT" || { log "haproxy did not start"; cat "$TMP/haproxy.out" >&2; exit 1; }

# --- paygate (started fresh for each target and round, fresh journal) -----------------------
# paygate and before use routes.toml.tmpl as it is (journal sync = "batch": the answer waits
# for the commit that holds the payment); paygate-async is the same file with sync = "async".
KEYHASH=$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)
PG_PID=; PG_URL=; PG_ADMIN=
start_paygate() { # dir-tag binary sync(batch|async)
  local dir=$TMP/paygate-$1 bin=$2 sync=$3
  rm -rf "$dir"
  mkdir -p "$dir"
  fill "$HERE/routes.toml.tmpl" | sed -e "s|@JOURNAL@|$dir/journal.db|" -e "s|@KEYHASH@|$KEYHASH|" \
    -e "s|^sync = \"batch\"|sync = \"$sync\"|" > "$dir/routes.toml"
  grep -q "^sync = \"$sync\"" "$dir/routes.toml" || { log "no sync = \"$sync\" in $dir/routes.toml (template changed?)"; exit 1; }
  "$bin" --config "$dir/routes.toml" check > /dev/null
  "$bin" --config "$dir/routes.toml" serve > "$dir/stdout" 2> "$dir/stderr" &
  PG_PID=$!
  PIDS+=("$PG_PID")
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
is_paygate() { case $1 in paygate|paygate-async|before) return 0 ;; esac; return 1; }
start_target() { # target tag: starts a fresh paygate for the paygate targets, else nothing
  case $1 in
    paygate) start_paygate "$2-$1" "$PAYGATE" batch ;;
    paygate-async) start_paygate "$2-$1" "$PAYGATE" async ;;
    before) start_paygate "$2-$1" "$BEFORE" batch ;;
  esac
}

url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$SIMPORT/payments" ;;
    paygate|paygate-async|before) echo "$PG_URL/v1/payments" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/v1/payments" ;;
    haproxy) echo "http://127.0.0.1:$HAPROXY_PORT/v1/payments" ;;
  esac
}
pid_of() {
  case $1 in
    direct) echo "$SIM_PID" ;;
    paygate|paygate-async|before) echo "$PG_PID" ;;
    nginx) echo "$NGINX_PID" ;;
    haproxy) echo "$HAPROXY_PID" ;;
  esac
}

# --- measuring ------------------------------------------------------------------------------
# run_wrk target kind(closed|paced) seconds tag [rate] -> RESULT line (all zeros and
# err_wrk=1 when wrk printed none, so a failed run counts as an error)
run_wrk() {
  local url path rate=0 script=$TMP/closed.lua
  url=$(url_of "$1"); path=/${url#http://*/}
  if [ "$2" = paced ]; then rate=$5; script=$TMP/paced.lua; fi
  wrk -t "$THREADS" -c "$CONNS" -d "${3}s" --timeout 5s -s "$script" "$url" \
    -- "$path" "$rate" "$THREADS" "$TMP/body.json" "$4" "$API_KEY" > "$TMP/wrk-$4.out" 2>&1 || true
  grep -m1 '^RESULT' "$TMP/wrk-$4.out" || {
    log "wrk failed:"; cat "$TMP/wrk-$4.out" >&2
    echo "RESULT requests=0 duration_us=1 rps=0 p50_us=0 p99_us=0 p999_us=0 max_us=0 err_connect=0 err_read=0 err_write=0 err_timeout=0 non2xx=0 err_wrk=1"
  }
}
field() { echo "$1" | grep -oE "(^| )$2=[0-9.]+" | cut -d= -f2; }
# connect/read/write errors, timeouts, non-2xx answers and failed wrk runs of a RESULT line
errors() { echo "$1" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(err_[a-z]+|non2xx)=/) {split($i, kv, "="); s += kv[2]}} END{print s+0}'; }
achieved() { awk -v n="$(field "$1" requests)" -v d="$(field "$1" duration_us)" 'BEGIN{printf "%.0f", (d > 0) ? n/(d/1e6) : 0}'; }
sim_reset() { curl -s -o /dev/null -X POST "http://127.0.0.1:$SIMPORT/_sim/reset" || true; }

# CPU time (utime + stime, fields 14 and 15 of /proc/PID/stat, in clock ticks) of a process
# and its children: nginx's master and all its workers; paygate, HAProxy and the simulator
# are one process each (its stat line counts all its threads). Fields are counted after the
# ")" that ends the command name, since that name may hold spaces.
cpu_ticks() { # pid
  local p t s=0 kids=()
  mapfile -t kids < <(pgrep -P "$1" || true)
  for p in "$1" "${kids[@]}"; do
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || t=0
    s=$((s + ${t:-0}))
  done
  echo "$s"
}
# µs of CPU per request from two tick counts and a request count
us_per_req() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN{if (n > 0) printf "%.2f", (b - a) * 1e6 / hz / n; else print "-"}'; }

# fdatasync latency on the filesystem of paygate's journals ($TMP): FSYNC_ITERS times, write
# 4 KiB at the end of a new file (as a growing WAL does) and time the fdatasync call.
# Bounded by the iteration count and by 30 s. -> FSYNC line, percentiles in µs
fsync_probe() { # tag
  python3 - "$TMP/fsync-$1.bin" "$FSYNC_ITERS" <<'EOF'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
block = os.urandom(4096)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
took = []
deadline = time.monotonic() + 30
try:
    for i in range(n):
        os.pwrite(fd, block, i * 4096)
        t0 = time.perf_counter_ns()
        os.fdatasync(fd)
        took.append(time.perf_counter_ns() - t0)
        if time.monotonic() > deadline:
            break
finally:
    os.close(fd)
    os.unlink(path)
took.sort()
def pct(tenths):  # nearest rank, percentile given in tenths of a percent
    return took[max(0, (len(took) * tenths + 999) // 1000 - 1)] // 1000
print(f"FSYNC calls={len(took)} p50_us={pct(500)} p99_us={pct(990)} p999_us={pct(999)} max_us={took[-1] // 1000}")
EOF
}

# sanity: one request through each path
for t in $TARGETS; do
  start_target "$t" check
  code=$(curl -s -o "$TMP/check-$t.json" -w '%{http_code}' -X POST "$(url_of "$t")" \
    -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: check-$t" --data-binary "@$TMP/body.json")
  log "check $t: HTTP $code"
  case $code in 200|201) ;; *) log "unexpected answer from $t:"; cat "$TMP/check-$t.json" >&2; exit 1 ;; esac
  if is_paygate "$t"; then stop_paygate; fi
done

# --- the disk, before the rounds --------------------------------------------------------------
FS_BEFORE=$(fsync_probe before)
log "fdatasync before the rounds: $FS_BEFORE"

# --- rounds ---------------------------------------------------------------------------------
# Per target and round: warm-up, closed-loop throughput run with CPU snapshots of the target
# (and the simulator) right before and right after it, then the paced run at LOW_RATE.
RAW=$TMP/raw.tsv
printf 'round\ttarget\trps\tp50_us\tp99_us\terrors\tcpu_us\tsim_cpu_us\tlow_rps\tlow_p50_us\tlow_p99_us\tlow_p999_us\tlow_errors\trss_kib\tstatuses\n' > "$RAW"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$REPEATS"); do
  for t in $TARGETS; do
    rss=-; statuses=-
    start_target "$t" "$round"
    pid=$(pid_of "$t")
    sim_reset
    warm=$(run_wrk "$t" closed "$WARMUP" "r$round-$t-warm")
    sim_reset
    c0=$(cpu_ticks "$pid"); s0=$(cpu_ticks "$SIM_PID")
    thr=$(run_wrk "$t" closed "$DURATION" "r$round-$t-thr")
    c1=$(cpu_ticks "$pid"); s1=$(cpu_ticks "$SIM_PID")
    sim_reset
    low=$(run_wrk "$t" paced "$LOW_DURATION" "r$round-$t-low" "$LOW_RATE")
    terr=$(( $(errors "$warm") + $(errors "$thr") ))
    lerr=$(errors "$low")
    n=$(field "$thr" requests)
    cpu=$(us_per_req "$c0" "$c1" "$n"); simcpu=$(us_per_req "$s0" "$s1" "$n")
    lowrate=$(achieved "$low")
    if is_paygate "$t"; then
      rss=$(awk '/VmHWM/{print $2}' "/proc/$PG_PID/status")
      statuses=$(curl -s "$PG_ADMIN/metrics" | awk '/^paygate_http_requests_total/ {match($0,/status="[0-9]+"/); s=substr($0,RSTART+8,3); c[s]+=$NF} END{for(k in c) if (c[k]>0) printf "%s:%d ", k, c[k]}')
      statuses=${statuses% }; [ -n "$statuses" ] || statuses=?
      stop_paygate
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" \
      "$(field "$thr" rps)" "$(field "$thr" p50_us)" "$(field "$thr" p99_us)" "$terr" "$cpu" "$simcpu" \
      "$lowrate" "$(field "$low" p50_us)" "$(field "$low" p99_us)" "$(field "$low" p999_us)" "$lerr" \
      "$rss" "$statuses" >> "$RAW"
    log "round $round $t: $(field "$thr" rps) req/s (errors $terr), CPU $cpu us/req (simulator $simcpu); at $lowrate req/s p50 $(field "$low" p50_us) us p99 $(field "$low" p99_us) us p99.9 $(field "$low" p999_us) us (errors $lerr); rss $rss KiB"
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the disk, after the rounds ---------------------------------------------------------------
FS_AFTER=$(fsync_probe after)
log "fdatasync after the rounds: $FS_AFTER"
# the bar uses the worse probe: the one with the larger p99
if [ "$(field "$FS_AFTER" p99_us)" -gt "$(field "$FS_BEFORE" p99_us)" ]; then FS=$FS_AFTER; FS_WHICH=after; else FS=$FS_BEFORE; FS_WHICH=before; fi
FS_P99=$(field "$FS" p99_us)

# --- report ---------------------------------------------------------------------------------
col() { # raw.tsv column name -> its number
  head -1 "$RAW" | tr '\t' '\n' | grep -nx "$1" | cut -d: -f1
}
med() { # target column -> median over rounds
  awk -F'\t' -v t="$1" -v c="$(col "$2")" 'NR>1 && $2==t && $c != "-" {print $c}' "$RAW" | sort -g | awk '{a[NR]=$1} END{if (NR == 0) print ""; else if (NR%2) print a[(NR+1)/2]; else printf "%g\n", (a[NR/2]+a[NR/2+1])/2}'
}
declare -A M
for t in $TARGETS; do
  for c in rps p50_us p99_us cpu_us sim_cpu_us low_rps low_p50_us low_p99_us low_p999_us; do M[$t,$c]=$(med "$t" "$c"); done
done
sum_errors() { awk -F'\t' -v t="$1" -v a="$(col errors)" -v b="$(col low_errors)" 'NR>1 && $2==t {s+=$a+$b} END{print s+0}' "$RAW"; }
peak_rss() { awk -F'\t' -v t="$1" -v c="$(col rss_kib)" 'NR>1 && $2==t && $c>m {m=$c} END{print m+0}' "$RAW"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2fx", a/b}'; }
ms() { if [ -z "$1" ]; then echo -; else awk -v u="$1" 'BEGIN{printf "%.3f", u/1000}'; fi; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f MiB", k/1024}'; }
num() { if [ -z "$1" ]; then echo -; else awk -v x="$1" -v f="$2" 'BEGIN{printf f, x}'; fi; }
# holds condition a b [c] -> 1 when a and b are figures, b > 0 and the condition on a, b, c holds
holds() { awk -v a="$2" -v b="$3" -v c="${4:-0}" "BEGIN{print (a != \"\" && b != \"\" && b > 0 && ($1)) ? 1 : 0}"; }
verdict() { if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi; }

b_thr=$(holds 'a >= 0.6*b' "${M[paygate,rps]}" "${M[nginx,rps]}")
b_thr_async=$(holds 'a >= 0.8*b' "${M[paygate-async,rps]}" "${M[nginx,rps]}")
b_cpu=$(holds 'a <= 2*b' "${M[paygate,cpu_us]}" "${M[nginx,cpu_us]}")
b_p99=$(holds 'a <= b + c + 500' "${M[paygate,low_p99_us]}" "${M[nginx,low_p99_us]}" "$FS_P99")
b_p999=$(holds 'a <= 3*b' "${M[paygate,low_p999_us]}" "${M[nginx,low_p999_us]}")
# A paygate that cannot sustain LOW_RATE has no latency at that rate: the latency bars fail.
why=""
if [ "$(holds 'a >= 0.95*b' "${M[paygate,low_rps]}" "$LOW_RATE")" = 0 ]; then
  b_p99=0; b_p999=0; why=" (paygate sustained only ${M[paygate,low_rps]} of $LOW_RATE req/s: the figures are at saturation)"
fi
RSS_PG=$(peak_rss paygate); RSS_ASYNC=$(peak_rss paygate-async)
ERR_PG=$(sum_errors paygate); ERR_ASYNC=$(sum_errors paygate-async)
b_rss=$(holds 'a > 0 && a < 65536' "$RSS_PG" 1); b_rss_async=$(holds 'a > 0 && a < 65536' "$RSS_ASYNC" 1)
b_err=$(holds 'a == 0' "$ERR_PG" 1); b_err_async=$(holds 'a == 0' "$ERR_ASYNC" 1)

{
  echo "# Load benchmark results"
  echo
  echo "Written by \`benches/load/run.sh\` (see \`benches/LOAD.md\`). Do not edit by hand."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); journals in \`$TMP\` on $(df -T "$TMP" | awk 'NR==2{print $2, "(" $1 ")"}')"
  echo "- Load average (1/5/15 min) before the rounds: $LOAD_START; after: $LOAD_END (load generator, targets and simulator share the $CORES cores; other work may have been running)"
  echo "- paygate $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes)'), $("$NGINX" -v 2>&1 | cut -d: -f2 | sed 's/^ //'), HAProxy $("$HAPROXY" -v | head -1 | awk '{print $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "- Targets: direct = the simulator itself; paygate = the full pipeline with journal \`sync = \"batch\"\` (an answer waits for the commit holding its payment); paygate-async = the same config with \`sync = \"async\"\` (the commit is not waited for); nginx and haproxy = bare reverse proxies${BEFORE:+; before = an earlier paygate build with the batch config}."
  echo "- Load: wrk, $THREADS threads, $CONNS connections, \`POST\` with a 400-byte JSON body, \`Authorization: Bearer\`, \`Content-Type\`, a unique \`Idempotency-Key\` per request. Per target and round: ${WARMUP} s warm-up, ${DURATION} s closed-loop throughput run (CPU snapshots of the target's processes right before and after it), ${LOW_DURATION} s run paced at $LOW_RATE req/s (wrk with a paced Lua schedule, see LOAD.md). $REPEATS round(s), targets interleaved; medians below."
  [ -n "$BEFORE" ] && echo "- before: \`$BEFORE\` ($("$BEFORE" --version 2>/dev/null || echo 'an earlier build')), the same config and rounds as paygate"
  echo "- Upstream: one \`paygate mock-psp --latency fixed:0 --success-rate 1.0\`; direct = \`POST /payments\` on it; nginx and HAProxy map \`/v1/payments\` to \`/payments\`; paygate routes over 3 channels all pointing at it (auth, rate limits, idempotency, adaptive routing, metrics, SQLite journal), each paygate target restarted with a fresh journal each round."
  echo
  echo "## Bars (issue 15)"
  echo
  echo "| bar | measured | result |"
  echo "| --- | --- | --- |"
  echo "| paygate (batch) req/s >= 0.6x nginx | $(num "${M[paygate,rps]}" %.0f) vs $(num "${M[nginx,rps]}" %.0f) req/s: $(ratio "${M[paygate,rps]}" "${M[nginx,rps]}") | $(verdict "$b_thr") |"
  echo "| paygate-async req/s >= 0.8x nginx | $(num "${M[paygate-async,rps]}" %.0f) vs $(num "${M[nginx,rps]}" %.0f) req/s: $(ratio "${M[paygate-async,rps]}" "${M[nginx,rps]}") | $(verdict "$b_thr_async") |"
  echo "| paygate (batch) CPU per payment <= 2x nginx's per request | $(num "${M[paygate,cpu_us]}" %.1f) µs vs $(num "${M[nginx,cpu_us]}" %.1f) µs: $(ratio "${M[paygate,cpu_us]}" "${M[nginx,cpu_us]}") | $(verdict "$b_cpu") |"
  echo "| at $LOW_RATE req/s: paygate p99 <= nginx p99 + fdatasync p99 + 0.5 ms | $(ms "${M[paygate,low_p99_us]}") ms vs $(ms "${M[nginx,low_p99_us]}") + $(ms "$FS_P99") + 0.5 = $(awk -v n="${M[nginx,low_p99_us]:-0}" -v f="$FS_P99" 'BEGIN{printf "%.3f", (n+f+500)/1000}') ms | $(verdict "$b_p99")$why |"
  echo "| at $LOW_RATE req/s: paygate p99.9 <= 3x nginx p99.9 | $(ms "${M[paygate,low_p999_us]}") ms vs 3 x $(ms "${M[nginx,low_p999_us]}") ms | $(verdict "$b_p999")$why |"
  echo "| paygate peak RSS < 64 MiB | $(mib "$RSS_PG") | $(verdict "$b_rss") |"
  echo "| paygate-async peak RSS < 64 MiB | $(mib "$RSS_ASYNC") | $(verdict "$b_rss_async") |"
  echo "| no request errors in any paygate run | $ERR_PG errors | $(verdict "$b_err") |"
  echo "| no request errors in any paygate-async run | $ERR_ASYNC errors | $(verdict "$b_err_async") |"
  echo
  echo "## Throughput (closed loop, $CONNS connections)"
  echo
  echo "| target | req/s | p50 ms | p99 ms |"
  echo "| --- | ---: | ---: | ---: |"
  for t in $TARGETS; do
    echo "| $t | $(num "${M[$t,rps]}" %.0f) | $(ms "${M[$t,p50_us]}") | $(ms "${M[$t,p99_us]}") |"
  done
  echo
  echo "| throughput ratio | /nginx | /haproxy | /direct${BEFORE:+ | /before} |"
  echo "| --- | ---: | ---: | ---:${BEFORE:+ | ---:} |"
  for p in paygate paygate-async; do
    echo "| $p | $(ratio "${M[$p,rps]}" "${M[nginx,rps]}") | $(ratio "${M[$p,rps]}" "${M[haproxy,rps]}") | $(ratio "${M[$p,rps]}" "${M[direct,rps]}")${BEFORE:+ | $(ratio "${M[$p,rps]}" "${M[before,rps]}")} |"
  done
  echo
  echo "## CPU per request (over the closed-loop run)"
  echo
  echo "Process CPU time (utime + stime from \`/proc/PID/stat\`, $CLK_TCK ticks/s) used during the throughput run, divided by the requests answered in it. nginx: its master and all its workers; HAProxy, paygate and the simulator: their one process (all threads). The simulator column is the upstream's cost in the same run (for direct it is the target itself)."
  echo
  echo "| target | CPU µs per request | vs nginx | simulator µs per request |"
  echo "| --- | ---: | ---: | ---: |"
  for t in $TARGETS; do
    echo "| $t | $(num "${M[$t,cpu_us]}" %.1f) | $(ratio "${M[$t,cpu_us]}" "${M[nginx,cpu_us]}") | $(num "${M[$t,sim_cpu_us]}" %.1f) |"
  done
  echo
  echo "## Latency at $LOW_RATE req/s (paced)"
  echo
  echo "| target | achieved req/s | p50 ms | p99 ms | p99.9 ms |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for t in $TARGETS; do
    echo "| $t | $(num "${M[$t,low_rps]}" %.0f) | $(ms "${M[$t,low_p50_us]}") | $(ms "${M[$t,low_p99_us]}") | $(ms "${M[$t,low_p999_us]}") |"
  done
  echo
  awk -F'\t' -v r="$LOW_RATE" -v c="$(col low_rps)" 'NR>1 && $c < 0.95*r {print $2}' "$RAW" | sort -u | while read -r t; do
    echo "Note: $t did not reach $LOW_RATE req/s in at least one paced run, so its latency figures there are those of a saturated server (wrk measures from the actual send: queueing before the send is not included)."
    echo
  done
  echo "### fdatasync on the journals' filesystem"
  echo
  echo "Measured by the script on \`$TMP\`: $FSYNC_ITERS times, 4 KiB written at the end of a new file, then \`fdatasync\` timed; once before and once after the rounds. The bar uses the worse of the two (the larger p99): **$FS_WHICH**."
  echo
  echo "| probe | calls | p50 ms | p99 ms | p99.9 ms | max ms |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for w in before after; do
    if [ $w = before ]; then f=$FS_BEFORE; else f=$FS_AFTER; fi
    echo "| $w the rounds | $(field "$f" calls) | $(ms "$(field "$f" p50_us)") | $(ms "$(field "$f" p99_us)") | $(ms "$(field "$f" p999_us)") | $(ms "$(field "$f" max_us)") |"
  done
  echo
  echo "## Every run"
  echo
  echo "Errors: connect/read/write errors, timeouts (5 s) and non-2xx answers as wrk counts them (closed loop: warm-up and throughput run together). CPU: µs per request over the throughput run. paygate statuses: \`paygate_http_requests_total\` by status over the round (warm-up included)."
  echo
  echo "| round | target | closed loop req/s | p50 ms | p99 ms | errors | CPU µs/req | simulator µs/req | at $LOW_RATE/s: achieved | p50 ms | p99 ms | p99.9 ms | errors | paygate VmHWM | paygate statuses |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  awk -F'\t' 'NR>1 {rss=($14=="-")?"-":sprintf("%.1f MiB",$14/1024); printf "| %s | %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %.3f | %.3f | %.3f | %s | %s | %s |\n", $1,$2,$3,$4/1000,$5/1000,$6,$7,$8,$9,$10/1000,$11/1000,$12/1000,$13,rss,$15}' "$RAW"
} > "$OUT"
log "wrote $OUT"
cat "$OUT"
