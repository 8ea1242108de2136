#!/usr/bin/env bash
# API server benchmark: N ConfigMaps and N Pods created through the HTTPS API by concurrent
# clients, then listed; the same writes and range reads done directly on the store are the
# baseline measured in the same run, so the printed ratio is the server's overhead.
# Usage: bench/apiserver.sh [N=10000] [CONCURRENCY=8] [embedded|etcd|both]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
C=${2:-8}
MODE=${3:-both}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p moat --bin moat --example apibench
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

start_server() { # dir, extra args...
  local dir=$1; shift
  mkdir -p "$dir"
  "$BIN/moat" server --disable-agent --listen 127.0.0.1:0 --data-dir "$dir" --disable-controllers "$@" 2>"$dir/log" &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  for _ in $(seq 1 300); do [ -s "$dir/kubeconfig.yaml" ] && return 0; sleep 0.1; done
  echo "server did not start: $(cat "$dir/log")" >&2; exit 1
}

if [ "$MODE" = embedded ] || [ "$MODE" = both ]; then
  echo "== embedded store (redb) =="
  start_server "$WORK/emb"
  "$BIN/examples/apibench" "$WORK/emb/kubeconfig.yaml" "$SERVER_PID" "$N" "$C" "redb:$WORK/baseline.redb"
  kill -9 "$SERVER_PID"
fi

if [ "$MODE" = etcd ] || [ "$MODE" = both ]; then
  echo "== etcd (Debian etcd-server, 127.0.0.1 only) =="
  command -v etcd >/dev/null || { echo "etcd-server is not installed (scripts/deps.sh)"; exit 1; }
  run_etcd() { # name dir client-port peer-port
    etcd --name "$1" --data-dir "$2" --listen-client-urls "http://127.0.0.1:$3" \
      --advertise-client-urls "http://127.0.0.1:$3" --listen-peer-urls "http://127.0.0.1:$4" \
      --initial-advertise-peer-urls "http://127.0.0.1:$4" --initial-cluster "$1=http://127.0.0.1:$4" \
      >"$2.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$3/health" >/dev/null && return 0; sleep 0.1; done
    echo "etcd did not start" >&2; exit 1
  }
  run_etcd api "$WORK/etcd-api" 23791 23801
  run_etcd base "$WORK/etcd-base" 23792 23802
  start_server "$WORK/etcdsrv" --datastore-endpoint http://127.0.0.1:23791
  "$BIN/examples/apibench" "$WORK/etcdsrv/kubeconfig.yaml" "$SERVER_PID" "$N" "$C" "etcd:http://127.0.0.1:23792"
fi
