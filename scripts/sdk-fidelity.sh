#!/usr/bin/env bash
# Checks the emulator against Genesys' official Python SDK
# (purecloudplatformclientv2): login, the notification REST API and event
# bodies must deserialize into the SDK's models. Then the bridge's resync
# records (tests/resync_bodies.rs writes them; generated here when absent
# or older than their mapping): each eventBody must be the SDK model of its
# topic. Needs only PyPI.
#
# Usage: scripts/sdk-fidelity.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="$ROOT/target/sdk-venv"
# The versions this check was last run and passed with.
SDK_VERSION="269.0.0"
WS_CLIENT_VERSION="1.9.2"

have_pins() {
    "$VENV/bin/python" - "$SDK_VERSION" "$WS_CLIENT_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("purecloudplatformclientv2"), version("websocket-client")) == tuple(sys.argv[1:3]) else 1)
EOF
}

if [ ! -x "$VENV/bin/python" ] || ! have_pins; then
    echo "sdk-fidelity: setting up $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "purecloudplatformclientv2==$SDK_VERSION" "websocket-client==$WS_CLIENT_VERSION"
fi

cargo build --quiet -p genesys-emulator --bin genesys-emulator --manifest-path "$ROOT/Cargo.toml"
BIN="$TARGET/debug/genesys-emulator"

LOG="$(mktemp)"
"$BIN" --listen 127.0.0.1:0 --heartbeat-interval 1s --socket-closing-grace 2s \
    --exclusive-subscriptions >"$LOG" 2>&1 &
PID=$!
cleanup() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -f "$LOG"
}
trap cleanup EXIT

# The emulator picks a free port and prints its base URL.
BASE=""
for _ in $(seq 1 100); do
    BASE="$(sed -n 's/^genesys-emulator listening on \(http:[^ ]*\).*/\1/p' "$LOG" | head -n 1)"
    [ -n "$BASE" ] && break
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "sdk-fidelity: the emulator exited:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$BASE" ]; then
    echo "sdk-fidelity: the emulator did not start" >&2
    cat "$LOG" >&2
    exit 1
fi
echo "sdk-fidelity: emulator at $BASE, SDK $SDK_VERSION"

STATUS=0
"$VENV/bin/python" "$ROOT/emulator/sdk-check/check.py" "$BASE" || STATUS=1

# The bridge's resync records. scripts/test.sh runs the tests first, so the
# file is normally there; regenerate it only when it is missing or older
# than the mapping that builds it.
RECORDS="$ROOT/target/sdk-check/resync-records.ndjson"
if [ ! -s "$RECORDS" ] || [ "$ROOT/src/genesys/state.rs" -nt "$RECORDS" ]; then
    echo "sdk-fidelity: generating $RECORDS (cargo test --test resync_bodies)"
    rm -f "$RECORDS"
    TEST_LOG="$(mktemp)"
    if ! cargo test --quiet --manifest-path "$ROOT/Cargo.toml" --test resync_bodies >"$TEST_LOG" 2>&1; then
        cat "$TEST_LOG" >&2
        rm -f "$TEST_LOG"
        echo "sdk-fidelity: cargo test --test resync_bodies failed" >&2
        exit 1
    fi
    rm -f "$TEST_LOG"
fi
"$VENV/bin/python" "$ROOT/emulator/sdk-check/check.py" --records "$RECORDS" || STATUS=1
exit "$STATUS"
