#!/usr/bin/env bash
# A real Kafka-protocol broker (Tansu) on loopback, for tests, the demo and
# local development.
#
#   scripts/kafka-dev.sh start|stop|status|restart [--port P] [--storage memory|sqlite]
#                        [--advertise HOST:PORT]   # clients are sent here (a proxy)
#   scripts/kafka-dev.sh install          # only install Tansu into the cache
#   scripts/kafka-dev.sh topic NAME [PARTITIONS] [--port P]
#
# Tansu 0.6.0 is built from crates.io once (about 8 minutes on 2 cores) into
# $GENESYS_BRIDGE_CACHE (default ~/.cache/genesys-kafka-bridge) and reused.
# State (pid, log, sqlite data) lives in target/kafka-dev/<port>/.
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE="${GENESYS_BRIDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/genesys-kafka-bridge}"
TANSU="$CACHE/tansu-$TANSU_VERSION/bin/tansu"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

cmd="${1:-}"; shift || true
port=9092
storage=memory
advertise=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --storage) storage="$2"; shift 2 ;;
    --advertise) advertise="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
state="$ROOT/target/kafka-dev/$port"
pidfile="$state/tansu.pid"

install() {
  if [ -x "$TANSU" ]; then return; fi
  echo "kafka-dev: installing tansu $TANSU_VERSION into $CACHE (one time, ~8 min)" >&2
  mkdir -p "$CACHE"
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql \
    --root "$CACHE/tansu-$TANSU_VERSION" >"$CACHE/tansu-install.log" 2>&1 || {
      tail -40 "$CACHE/tansu-install.log" >&2; exit 1; }
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

start() {
  install
  if running; then echo "kafka-dev: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
  if listening; then echo "kafka-dev: port $port is taken by another process" >&2; exit 1; fi
  mkdir -p "$state"
  # The address clients are told to use (a proxy in front, say); a restart
  # keeps the one given at the last start.
  if [ -n "$advertise" ]; then echo "$advertise" >"$state/advertise"
  elif [ -f "$state/advertise" ]; then advertise="$(cat "$state/advertise")"
  else advertise="127.0.0.1:$port"; fi
  case "$storage" in
    memory) engine="memory://tansu/" ;;
    # Tansu resolves the sqlite path relative to its working directory.
    sqlite) engine="sqlite://tansu.db" ;;
    *) echo "kafka-dev: --storage is memory or sqlite" >&2; exit 2 ;;
  esac
  (cd "$state" && exec nohup "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://$advertise" \
      --storage-engine "$engine" >>"$state/tansu.log" 2>&1 < /dev/null) &
  echo $! >"$pidfile"
  echo "$storage" >"$state/storage"
  for _ in $(seq 1 100); do
    if listening; then echo "kafka-dev: tansu on 127.0.0.1:$port ($storage), log $state/tansu.log"; return; fi
    if ! running; then tail -20 "$state/tansu.log" >&2; echo "kafka-dev: tansu exited" >&2; exit 1; fi
    sleep 0.1
  done
  echo "kafka-dev: tansu did not listen within 10 s" >&2; exit 1
}

stop() {
  if running; then
    pid="$(cat "$pidfile")"
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "kafka-dev: stopped 127.0.0.1:$port"
  fi
  rm -f "$pidfile"
}

case "$cmd" in
  install) install; echo "$TANSU" ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status)
    if running; then echo "running 127.0.0.1:$port pid $(cat "$pidfile") storage $(cat "$state/storage" 2>/dev/null)"; else echo "stopped"; exit 3; fi ;;
  topic)
    install
    name="${args[0]:?topic NAME [PARTITIONS]}"; partitions="${args[1]:-3}"
    "$TANSU" topic create "$name" --partitions "$partitions" --broker "tcp://127.0.0.1:$port" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
