#!/usr/bin/env bash
# Checks paygate's Prometheus assets and its live /metrics exposition with promtool.
#
#   bash .ci/promtool.sh [PATH_TO_PAYGATE_BINARY]      (default: target/debug/paygate)
#
# 1. makes sure promtool exists (Debian package `prometheus`, installed if missing);
# 2. `promtool check rules` on deploy/prometheus/alerts.yml, `promtool check config` on
#    deploy/prometheus/prometheus.yml, and `promtool test rules` on unit tests of the alerts;
# 3. proves the metrics pipeline on a small hand-written exposition;
# 4. live scrape: starts the binary on a throwaway routes file (ports 0, in-process
#    simulators), sends a few payments, fetches GET /metrics from the admin listener, and runs
#    `promtool check metrics` on it (a parse error or a lint problem fails), then checks that
#    every metric name of the contract is there and that no card number leaked.
#
# Environment:
#   PROMTOOL=/path/to/promtool   use this promtool instead of the one on PATH
#   PROMTOOL_SKIP_LIVE=1         stop after steps 1-3 (no binary needed)
#   PROMTOOL_LINT=warn           report `promtool check metrics` lint problems (exit 3)
#                                without failing; parse errors (exit 1) still fail
#   PROMTOOL_KEEP=FILE           also copy the scraped exposition to FILE
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:-target/debug/paygate}"
RULES=deploy/prometheus/alerts.yml
CONFIG=deploy/prometheus/prometheus.yml

say() { printf '==> %s\n' "$*"; }
fail() {
    printf 'promtool.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

WORK="$(mktemp -d)"
PAYGATE_PID=""
cleanup() {
    if [[ -n "$PAYGATE_PID" ]] && kill -0 "$PAYGATE_PID" 2>/dev/null; then
        kill -TERM "$PAYGATE_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$PAYGATE_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$PAYGATE_PID" 2>/dev/null || true
        wait "$PAYGATE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. promtool ---------------------------------------------------------------------------
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
if [[ -z "$PROMTOOL" ]]; then
    say "promtool not found: installing the Debian package prometheus (provides /usr/bin/promtool)"
    if [[ "$(id -u)" -ne 0 ]]; then
        fail "promtool is missing and this is not root: apt-get install prometheus, or set PROMTOOL"
    fi
    start=$(date +%s)
    apt-get update -qq
    # --no-install-recommends: skips prometheus-node-exporter. On a host that runs systemd the
    # package enables and starts prometheus.service (port 9090); containers usually refuse that.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    say "installed in $(($(date +%s) - start)) s"
    PROMTOOL="$(command -v promtool || true)"
    [[ -n "$PROMTOOL" ]] || fail "the prometheus package did not provide promtool"
fi
"$PROMTOOL" --version 2>&1 | head -n 1

# --- 2. rules, config, rule unit tests -------------------------------------------------------
say "promtool check rules $RULES"
"$PROMTOOL" check rules "$RULES" || fail "promtool check rules $RULES"

say "promtool check config $CONFIG"
# rule_files in the config are relative to the config's own folder, which promtool honours.
"$PROMTOOL" check config "$CONFIG" || fail "promtool check config $CONFIG"

say "promtool test rules (alert unit tests)"
cat >"$WORK/alerts_test.yml" <<EOF
rule_files:
  - $PWD/$RULES
evaluation_interval: 30s
tests:
  # Every channel ejected: fires after 1 m; a second instance with a healthy channel does not.
  - interval: 30s
    input_series:
      - series: 'paygate_channel_state{job="paygate",instance="a:9091",channel="psp_a",state="healthy"}'
        values: '0x10'
      - series: 'paygate_channel_state{job="paygate",instance="a:9091",channel="psp_a",state="ejected"}'
        values: '1x10'
      - series: 'paygate_channel_state{job="paygate",instance="a:9091",channel="psp_b",state="healthy"}'
        values: '0x10'
      - series: 'paygate_channel_state{job="paygate",instance="a:9091",channel="psp_b",state="drained"}'
        values: '1x10'
      - series: 'paygate_channel_state{job="paygate",instance="b:9091",channel="psp_a",state="healthy"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: PaygateAllChannelsEjected
        exp_alerts:
          - exp_labels: {severity: critical, job: paygate, instance: "a:9091"}
            exp_annotations:
              summary: "paygate a:9091 has no healthy channel"
              description: "None of the 2 channels of a:9091 is healthy: every one is ejected, probing or drained. The router is in panic mode (the least bad ejected channel is still used), so expect 502 all_channels_failed and 422 no_eligible_channel."
              runbook: "deploy/prometheus/README.md#paygateallchannelsejected"

  # A rejected reload fires; ok reloads do not.
  - interval: 1m
    input_series:
      - series: 'paygate_config_reloads_total{job="paygate",instance="a:9091",result="rejected"}'
        values: '0 0 0 1 1 1'
      - series: 'paygate_config_reloads_total{job="paygate",instance="a:9091",result="ok"}'
        values: '0 1 2 3 4 5'
    alert_rule_test:
      - eval_time: 1m
        alertname: PaygateConfigReloadRejected
        exp_alerts: []
      - eval_time: 4m
        alertname: PaygateConfigReloadRejected
        exp_alerts:
          - exp_labels: {severity: warning, job: paygate, instance: "a:9091", result: rejected}
            exp_annotations:
              summary: "paygate a:9091 rejected a config reload"
              description: "A reload of the routes file on a:9091 was refused in the last 10 minutes. paygate keeps serving the previous version (see paygate_config_info); the file on disk is not what is running."
              runbook: "deploy/prometheus/README.md#paygateconfigreloadrejected"

  # A channel whose success falls from 95% to 60% (10 attempts/s) fires; a steady one does not.
  - interval: 1m
    input_series:
      - series: 'paygate_channel_attempts_total{job="paygate",instance="a:9091",channel="psp_a",outcome="succeeded"}'
        values: '0+570x60 34200+360x20'
      - series: 'paygate_channel_attempts_total{job="paygate",instance="a:9091",channel="psp_a",outcome="declined"}'
        values: '0+30x60 1800+240x20'
      - series: 'paygate_channel_attempts_total{job="paygate",instance="a:9091",channel="psp_b",outcome="succeeded"}'
        values: '0+570x80'
      - series: 'paygate_channel_attempts_total{job="paygate",instance="a:9091",channel="psp_b",outcome="declined"}'
        values: '0+30x80'
    alert_rule_test:
      - eval_time: 55m
        alertname: PaygateChannelSuccessRateDrop
        exp_alerts: []
    # The firing value depends on where the evaluations fall in the window, so this checks
    # ALERTS rather than the rendered description.
    promql_expr_test:
      - expr: ALERTS{alertname="PaygateChannelSuccessRateDrop", alertstate="firing"}
        eval_time: 75m
        exp_samples:
          - labels: 'ALERTS{alertname="PaygateChannelSuccessRateDrop", alertstate="firing", severity="warning", job="paygate", channel="psp_a"}'
            value: 1

  # 5xx on POST /v1/payments, two instances judged together: 35 of 2000 a minute (1.75%,
  # 17.5x the 0.1% budget) fires both burn-rate alerts; before the errors start, neither.
  - interval: 1m
    input_series:
      - series: 'paygate_http_requests_total{job="paygate",instance="a:9091",route="/v1/payments",status="201"}'
        values: '0+970x400'
      - series: 'paygate_http_requests_total{job="paygate",instance="a:9091",route="/v1/payments",status="502"}'
        values: '0x60 0+30x340'
      - series: 'paygate_http_requests_total{job="paygate",instance="b:9091",route="/v1/payments",status="201"}'
        values: '0+995x400'
      - series: 'paygate_http_requests_total{job="paygate",instance="b:9091",route="/v1/payments",status="503"}'
        values: '0x60 0+5x340'
    alert_rule_test:
      - eval_time: 50m
        alertname: PaygateErrorBudgetBurnFast
        exp_alerts: []
      - eval_time: 50m
        alertname: PaygateErrorBudgetBurnSlow
        exp_alerts: []
    promql_expr_test:
      - expr: ALERTS{alertname=~"PaygateErrorBudgetBurn.*", alertstate="firing"}
        eval_time: 6h
        exp_samples:
          - labels: 'ALERTS{alertname="PaygateErrorBudgetBurnFast", alertstate="firing", severity="critical", job="paygate"}'
            value: 1
          - labels: 'ALERTS{alertname="PaygateErrorBudgetBurnSlow", alertstate="firing", severity="critical", job="paygate"}'
            value: 1

  # p99 of POST /v1/payments at about 4.4 s for 20 m fires the latency alert.
  - interval: 1m
    input_series:
      - series: 'paygate_http_request_duration_seconds_bucket{job="paygate",instance="a:9091",route="/v1/payments",le="1"}'
        values: '0+90x30'
      - series: 'paygate_http_request_duration_seconds_bucket{job="paygate",instance="a:9091",route="/v1/payments",le="2"}'
        values: '0+95x30'
      - series: 'paygate_http_request_duration_seconds_bucket{job="paygate",instance="a:9091",route="/v1/payments",le="5"}'
        values: '0+100x30'
      - series: 'paygate_http_request_duration_seconds_bucket{job="paygate",instance="a:9091",route="/v1/payments",le="+Inf"}'
        values: '0+100x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: PaygatePaymentLatencyHigh
        exp_alerts:
          - exp_labels: {severity: warning, job: paygate}
            exp_annotations:
              summary: "p99 of POST /v1/payments is 4.4s"
              description: "The 99th percentile of POST /v1/payments has been above the 2 s SLO for 10 minutes."
              runbook: "deploy/prometheus/README.md#paygatepaymentlatencyhigh"

  # Process down.
  - interval: 30s
    input_series:
      - series: 'up{job="paygate",instance="a:9091"}'
        values: '1 1 0 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 4m
        alertname: PaygateDown
        exp_alerts:
          - exp_labels: {severity: critical, job: paygate, instance: "a:9091"}
            exp_annotations:
              summary: "paygate a:9091 cannot be scraped"
              description: "Prometheus has failed to scrape a:9091 (job paygate) for 2 minutes: the process is down, hung, or its admin listener is unreachable."
              runbook: "deploy/prometheus/README.md#paygatedown"
EOF
"$PROMTOOL" test rules "$WORK/alerts_test.yml" || fail "promtool test rules (alert unit tests)"

# --- 3. the check-metrics pipeline on a known exposition ---------------------------------------
# Runs `promtool check metrics` on TEXT from stdin; prints its findings; returns its exit code
# (0 clean, 1 parse error, 3 lint problems).
check_metrics() {
    local out rc=0
    out="$("$PROMTOOL" check metrics <"$1" 2>&1)" || rc=$?
    if [[ -n "$out" ]]; then
        printf '%s\n' "$out" | sed 's/^/    promtool: /'
    fi
    return "$rc"
}

say "pipeline self-test: a valid exposition passes, a broken one fails"
printf '%s\n' \
    '# HELP paygate_http_requests_total Merchant API requests by route template and status.' \
    '# TYPE paygate_http_requests_total counter' \
    'paygate_http_requests_total{route="/v1/payments",status="201"} 3' \
    '# HELP paygate_inflight_requests Merchant requests being handled.' \
    '# TYPE paygate_inflight_requests gauge' \
    'paygate_inflight_requests 0' >"$WORK/good.prom"
check_metrics "$WORK/good.prom" || fail "promtool check metrics rejects a valid exposition"
printf 'paygate_broken{route= 1\n' >"$WORK/bad.prom"
if check_metrics "$WORK/bad.prom" >/dev/null 2>&1; then
    fail "promtool check metrics accepted a broken exposition: the pipeline proves nothing"
fi

if [[ "${PROMTOOL_SKIP_LIVE:-}" == 1 ]]; then
    say "PROMTOOL_SKIP_LIVE=1: live scrape skipped"
    say "OK"
    exit 0
fi

# --- 4. live scrape ----------------------------------------------------------------------------
command -v curl >/dev/null || fail "curl is needed for the live scrape"
[[ -x "$BIN" ]] || fail "no paygate binary at $BIN (build it first: cargo build)"

KEY="ci-metrics-$$-$RANDOM"
KEY_SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
ROUTES="$WORK/routes.toml"
cat >"$ROUTES" <<EOF
# Throwaway routes for .ci/promtool.sh: any free ports, in-process simulators only.
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[routing]
strategy = "adaptive"

[risk]
max_amount = 100000

[[merchants]]
id = "ci"
api_key_sha256 = "$KEY_SHA"

[[channels]]
name = "psp_ok"
url = "sim://sim_ok"
protocol = "paygate-v1"
timeout_ms = 5000
currencies = ["EUR"]
methods = ["card"]
retryable_codes = ["issuer_unavailable"]

[[channels]]
name = "psp_down"
url = "sim://sim_down"
protocol = "paygate-v1"
timeout_ms = 5000
currencies = ["EUR"]
methods = ["card"]

[[rules]]
name = "ci-all"
channels = ["psp_down", "psp_ok"]
strategy = "priority"

[[simulators]]
name = "sim_ok"
behavior = { success_rate = 1.0, latency = { kind = "fixed", ms = 2 } }

[[simulators]]
name = "sim_down"
behavior = { error_503 = 1.0 }
EOF

say "paygate check $ROUTES"
"$BIN" --config "$ROUTES" check "$ROUTES" || fail "paygate check refused the throwaway routes file (above)"

say "starting $BIN --config $ROUTES serve"
"$BIN" --config "$ROUTES" serve >"$WORK/stdout" 2>"$WORK/stderr" &
PAYGATE_PID=$!

LINE=""
for _ in $(seq 1 300); do # 30 s
    LINE="$(grep -m1 '^paygate listening on ' "$WORK/stdout" 2>/dev/null || true)"
    [[ -n "$LINE" ]] && break
    if ! kill -0 "$PAYGATE_PID" 2>/dev/null; then
        sed 's/^/    stderr: /' "$WORK/stderr" >&2 || true
        fail "paygate exited before printing its listening line"
    fi
    sleep 0.1
done
if [[ -z "$LINE" ]]; then
    sed 's/^/    stderr: /' "$WORK/stderr" >&2 || true
    fail "paygate printed no 'paygate listening on' line within 30 s"
fi
# paygate listening on http://ADDR (admin http://ADMIN)
MERCHANT="$(sed -n 's#^paygate listening on \(https\?://[^ ]*\) (admin \(https\?://[^)]*\)).*#\1#p' <<<"$LINE")"
ADMIN="$(sed -n 's#^paygate listening on \(https\?://[^ ]*\) (admin \(https\?://[^)]*\)).*#\2#p' <<<"$LINE")"
[[ -n "$MERCHANT" && -n "$ADMIN" ]] || fail "cannot parse the listening line: $LINE"
say "merchant API $MERCHANT, admin $ADMIN"

# Sends one payment; prints the HTTP status.
pay() { # CARD AMOUNT [IDEMPOTENCY_KEY]
    local extra=()
    [[ -n "${3:-}" ]] && extra=(-H "Idempotency-Key: $3")
    curl -s -o "$WORK/last.json" -w '%{http_code}' --max-time 20 \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "${extra[@]}" \
        -d "{\"amount\": $2, \"currency\": \"EUR\", \"method\": \"card\", \"country\": \"DE\",
             \"reference\": \"ci-${3:-$RANDOM}\", \"capture\": true,
             \"card\": {\"number\": \"$1\", \"exp_month\": 12, \"exp_year\": 2030, \"cvc\": \"123\"}}" \
        "$MERCHANT/v1/payments" || echo "000"
}

codes=()
for _ in 1 2 3 4 5 6 7 8; do codes+=("$(pay 4111111111111111 1999)"); done
codes+=("$(pay 4000000000000002 1999)")      # declined by the simulator
codes+=("$(pay 4111111111111111 250000)")    # over [risk] max_amount: 422 risk_rejected
codes+=("$(pay 4111111111111111 500 ci-idem)")
codes+=("$(pay 4111111111111111 500 ci-idem)") # replay
codes+=("$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'Authorization: Bearer wrong' \
    -X POST "$MERCHANT/v1/payments" || echo 000)") # 401
say "payment answers: ${codes[*]}"
ok=0
for c in "${codes[@]}"; do [[ "$c" == 201 ]] && ok=$((ok + 1)); done
if [[ "$ok" -eq 0 ]]; then
    printf 'promtool.sh: warning: no payment answered 201; last body: %s\n' \
        "$(head -c 400 "$WORK/last.json" 2>/dev/null)" >&2
fi

say "GET $ADMIN/metrics"
status="$(curl -s -o "$WORK/metrics.prom" -w '%{http_code}' --max-time 10 "$ADMIN/metrics" || echo 000)"
if [[ "$status" != 200 ]]; then
    fail "GET $ADMIN/metrics answered HTTP $status (body: $(head -c 200 "$WORK/metrics.prom" 2>/dev/null | tr -s '\n\t ' ' '))"
fi
[[ -n "${PROMTOOL_KEEP:-}" ]] && cp "$WORK/metrics.prom" "$PROMTOOL_KEEP"
say "$(grep -vc '^#' "$WORK/metrics.prom") samples, $(grep -c '^# TYPE' "$WORK/metrics.prom") metrics"

say "promtool check metrics"
rc=0
check_metrics "$WORK/metrics.prom" || rc=$?
if [[ "$rc" -eq 3 && "${PROMTOOL_LINT:-}" == warn ]]; then
    printf 'promtool.sh: warning: lint problems above (PROMTOOL_LINT=warn)\n' >&2
elif [[ "$rc" -ne 0 ]]; then
    fail "promtool check metrics exited $rc on the live exposition (findings above)"
fi

say "contract metric names"
missing=()
for name in \
    paygate_http_requests_total paygate_http_request_duration_seconds_bucket \
    paygate_payments_total paygate_channel_attempts_total paygate_channel_latency_seconds_bucket \
    paygate_channel_success_rate paygate_channel_score paygate_channel_state \
    paygate_failovers_total paygate_rate_limited_total paygate_idempotent_replays_total \
    paygate_inflight_requests paygate_config_reloads_total paygate_config_info \
    process_cpu_seconds_total process_resident_memory_bytes; do
    grep -q "^${name}[{ ]" "$WORK/metrics.prom" || missing+=("$name")
done
[[ ${#missing[@]} -eq 0 ]] || fail "missing from /metrics: ${missing[*]}"
# Label values the dashboard and the alerts select on.
for series in \
    'paygate_http_requests_total{route="/v1/payments",status="201"}' \
    'paygate_channel_state{channel="psp_ok",state="healthy"}' \
    'paygate_channel_attempts_total{channel="psp_ok",outcome="succeeded"}' \
    'paygate_config_reloads_total{result="rejected"}' \
    'paygate_rate_limited_total{scope="merchant"}'; do
    metric="${series%%\{*}"
    labels="${series#*\{}"
    labels="${labels%\}}"
    found=0
    while IFS= read -r line; do
        all=1
        IFS=',' read -ra pairs <<<"$labels"
        for pair in "${pairs[@]}"; do [[ "$line" == *"$pair"* ]] || all=0; done
        [[ "$all" -eq 1 ]] && found=1 && break
    done < <(grep "^$metric{" "$WORK/metrics.prom" || true)
    [[ "$found" -eq 1 ]] || missing+=("$series")
done
[[ ${#missing[@]} -eq 0 ]] || fail "series missing from /metrics: ${missing[*]}"
for name in paygate_risk_rejections_total paygate_channel_ejections_total paygate_idempotency_keys; do
    grep -q "^${name}[{ ]" "$WORK/metrics.prom" ||
        printf 'promtool.sh: warning: %s not exposed (yet)\n' "$name" >&2
done

if grep -q -e 4111111111111111 -e 4000000000000002 "$WORK/metrics.prom"; then
    fail "a card number appears in /metrics"
fi

say "OK"
