#!/usr/bin/env bash
# Scheduling benchmark: N Node objects and P pending pods through the API of a fresh
# `moat server`; prints pods/s bound, p50/p99 create→bound latency, and the scheduling
# algorithm alone on the same snapshot as the baseline measured in the same run.
# Usage: bench/scheduler.sh [NODES=1000] [PODS=10000] [CONCURRENCY=8]
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-1000}
PODS=${2:-10000}
C=${3:-8}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p moat --bin moat --example schedbench
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && { kill -9 "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; } || true; rm -rf "$WORK"; }
trap cleanup EXIT
# No heartbeats come from these Node objects: give them an hour before the node lifecycle
# controller would call them unreachable.
"$BIN/moat" server --disable-agent --listen 127.0.0.1:0 --data-dir "$WORK" --node-monitor-grace-period 1h 2>"$WORK/log" &
PID=$!
for _ in $(seq 1 300); do [ -s "$WORK/kubeconfig.yaml" ] && break; sleep 0.1; done
"$BIN/examples/schedbench" "$WORK/kubeconfig.yaml" "$NODES" "$PODS" "$C"
