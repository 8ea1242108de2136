#!/usr/bin/env bash
# RBAC benchmark: ConfigMap creates/s by a user authenticated with a client certificate and
# authorized by RBAC (a RoleBinding to `edit` among 120 bindings) against the admin token
# (system:masters, no RBAC lookup), alternating rounds on the same server; the printed ratio
# is the authorizer's cost (goal >= 0.9).
# Usage: bench/rbac.sh [N per round=500] [CONCURRENCY=8] [ROUNDS=11]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}
C=${2:-8}
R=${3:-11}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p moat --bin moat --example rbacbench
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN/moat" server --disable-agent --listen 127.0.0.1:0 --data-dir "$WORK" --disable-controllers 2>"$WORK/log" &
SERVER_PID=$!
for _ in $(seq 1 300); do [ -s "$WORK/kubeconfig.yaml" ] && break; sleep 0.1; done
[ -s "$WORK/kubeconfig.yaml" ] || { echo "server did not start: $(cat "$WORK/log")" >&2; exit 1; }
"$BIN/examples/rbacbench" "$WORK" "$N" "$C" "$R"
