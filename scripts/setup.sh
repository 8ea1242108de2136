#!/usr/bin/env bash
# README command 1: install, build, and start a one-node moat cluster on the embedded store.
# Usage: scripts/setup.sh [--no-run]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --bins
out="${CARGO_TARGET_DIR:-target}/release"
install -m 0755 "$out/moat" /usr/local/bin/moat
if [ -x "$out/moat-runtime" ]; then
  # The VM runtime's guest assets (`moat-runtime assets build --agent ...`) join setup once
  # the guest agent exists; nothing boots a VM yet.
  install -m 0755 "$out/moat-runtime" /usr/local/bin/moat-runtime
fi
[ "${1:-}" = "--no-run" ] && exit 0
echo "starting moat server; in another shell: export KUBECONFIG=/var/lib/moat/kubeconfig.yaml; kubectl get ns"
exec moat server --data-dir /var/lib/moat
