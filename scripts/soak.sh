#!/usr/bin/env bash
# The seeded chaos soak (tests/soak.rs), as long as you like.
#
#   scripts/soak.sh [--duration 2h] [--seed N] [--log info]
#
# The emulator, a private Tansu broker (sqlite, port 19293, behind a proxy on
# 19294) and the release bridge binary; faults at random every 0.5-3 s. It
# prints the seed first and one line of figures at the end, and exits non-zero
# on any loss, duplicate, unmatched gap or leaked secret. scripts/test.sh runs
# the same test for 2 minutes. The bridge's log: target/soak/<seed>/bridge.log
# (at trace it grows by about 1 GB an hour; --log info for long runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) export SOAK_DURATION="$2"; shift 2 ;;
    --seed) export SOAK_SEED="$2"; shift 2 ;;
    --log) export SOAK_LOG="$2"; shift 2 ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
exec cargo test --release --test soak -- --nocapture
