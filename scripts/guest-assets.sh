#!/usr/bin/env bash
# Builds the VM runtime's guest assets: the static guest agent (PID 1 of every sandbox VM),
# then vmlinux + initramfs from Debian's linux-image package (apt-get download, never
# installed on the host). Idempotent: the asset build skips work when nothing changed.
# Usage: scripts/guest-assets.sh [OUT_DIR]   (default /var/lib/moat-runtime/assets)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/var/lib/moat-runtime/assets}
target=${CARGO_TARGET_DIR:-target}
# crt-static on the gnu target gives a self-contained PID 1 (VM.md); naming --target keeps
# the flag off build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build -q --release -p moat-guest-agent --target x86_64-unknown-linux-gnu
rt=${MOAT_RUNTIME:-}
if [ -z "$rt" ]; then
  cargo build -q -p moat-runtime
  rt="$target/debug/moat-runtime"
fi
# busybox-static is the debug console's shell (initramfs-debug.cpio only).
"$rt" assets build \
  --agent "$target/x86_64-unknown-linux-gnu/release/moat-guest-agent" --out "$out" \
  --debug-shell /bin/busybox
