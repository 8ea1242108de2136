#!/usr/bin/env bash
# Builds the VM runtime's guest assets: the static guest agent (PID 1 of every sandbox VM);
# our guest kernel, compiled from Debian's linux-source-6.1 with the reviewed fragment
# crates/moat-runtime/kernel/guest.config (once: cached by the hash of fragment and source
# version under $MOAT_KERNEL_CACHE, default /var/cache/moat); then vmlinux-moat +
# initramfs-moat.cpio (no modules) beside Debian's vmlinux + initramfs.cpio from its
# linux-image package (apt-get download, never installed on the host; the fallback,
# `[assets] kernel = "debian"`). Idempotent. A failed kernel build stops here, naming its
# step, before the asset directory is touched.
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
kernel=$("$rt" assets kernel --fragment crates/moat-runtime/kernel/guest.config \
  --cache "${MOAT_KERNEL_CACHE:-/var/cache/moat}" --jobs "${MOAT_KERNEL_JOBS:-2}")
# busybox-static is the debug console's shell (initramfs*-debug.cpio only).
"$rt" assets build \
  --agent "$target/x86_64-unknown-linux-gnu/release/moat-guest-agent" --out "$out" \
  --debug-shell /bin/busybox --kernel "$kernel"
