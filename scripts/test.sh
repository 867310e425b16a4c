#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
# formatting, lints, unit and integration tests against a real local Kafka
# broker and the in-repo Genesys emulator, and the fidelity check of the
# emulator against Genesys' own Python SDK, the observability check and the
# container image built and run. Stops everything it started, even on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PORT="${TEST_KAFKA_PORT:-19092}"

cleanup() {
  # The shared broker, and any broker a test started and could not stop.
  for state in target/kafka-dev/*/; do
    [ -d "$state" ] || continue
    scripts/kafka-dev.sh stop --port "$(basename "$state")" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "installing the local broker (cached after the first run)"
scripts/kafka-dev.sh install >/dev/null
# A port something else holds (another checkout's broker) is skipped.
while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
step "starting the shared test broker on 127.0.0.1:$PORT"
scripts/kafka-dev.sh start --port "$PORT"
export TEST_KAFKA_BROKERS="127.0.0.1:$PORT"

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo test"
cargo test --workspace -- --skip seeded_chaos_soak
step "the chaos soak (2 minutes of faults; prints its seed and its figures)"
# The seed comes from the commit id: each commit explores new faults, and a
# rerun of the same commit replays the same ones. SOAK_SEED overrides;
# scripts/soak.sh draws a random seed each run.
if [ -z "${SOAK_SEED:-}" ]; then
  commit="$(git rev-parse HEAD 2>/dev/null || echo 0)"
  SOAK_SEED="$(printf '%d' "0x${commit:0:15}")"
fi
SOAK_SEED="$SOAK_SEED" cargo test --test soak -- --nocapture
step "emulator fidelity against Genesys' Python SDK"
scripts/sdk-fidelity.sh
step "observability: promtool, a real Prometheus, the dashboard's queries, the Helm chart, hadolint"
scripts/observability-check.sh
step "the container image: buildah builds the Dockerfile, the image runs the demo and the chart's config"
# Base images and cargo caches are kept between runs (see scripts/image-check.sh).
scripts/image-check.sh
step "all checks passed"
