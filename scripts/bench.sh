#!/usr/bin/env bash
# End-to-end benchmark: emulator → release bridge binary → local Tansu broker.
#
#   scripts/bench.sh [--topics 10000] [--max-rate 150000] [--seconds 20] [--drops 50]
#   scripts/bench.sh --hot-path      # also the per-event criterion benches
#   BENCH_ONLY=load BENCH_BRIDGE_ENV=GENESYS_BRIDGE_KAFKA__PARTITIONS=1 scripts/bench.sh
#                                    # experiments: one phase only (idle, moderate, floor, load, latency,
#                                    # recovery, directory, resync), settings overridden
#   BENCH_BODY_REUSE=1 scripts/bench.sh
#                                    # a fresh generated body per event in the load phase (default 16)
#
# Prints one table (measure, target, result, verdict) and writes it to
# target/bench/end-to-end.md. Takes about 18 minutes with the defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

hot=0
while [ $# -gt 0 ]; do
  case "$1" in
    --topics) export BENCH_TOPICS="$2"; shift 2 ;;
    --max-rate) export BENCH_MAX_RATE="$2"; shift 2 ;;
    --seconds) export BENCH_SECONDS="$2"; shift 2 ;;
    --drops) export BENCH_DROPS="$2"; shift 2 ;;
    --hot-path) hot=1; shift ;;
    *) sed -n '2,13p' "$0"; exit 2 ;;
  esac
done
scripts/kafka-dev.sh install >/dev/null
if [ "$hot" = 1 ]; then cargo bench --bench hot_path; fi
exec cargo bench --bench end_to_end
