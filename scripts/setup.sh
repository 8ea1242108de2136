#!/usr/bin/env bash
# README command 1: install, build, and start a one-node moat cluster on the embedded store.
# Usage: scripts/setup.sh [--no-run]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --bins
out="${CARGO_TARGET_DIR:-target}/release"
# Installed stripped; the debug info (line tables: file and line in backtraces, perf, gdb)
# goes to a separate file beside each binary, in /usr/local/bin/.debug/, which the binary
# names in its .gnu_debuglink (gdb and Rust's backtraces look there).
install -d -m 0755 /usr/local/bin/.debug
for bin in moat moat-runtime; do
  tmp="$(mktemp -d)"
  objcopy --only-keep-debug "$out/$bin" "$tmp/$bin.debug"
  objcopy --strip-all --add-gnu-debuglink="$tmp/$bin.debug" "$out/$bin" "$tmp/$bin"
  install -m 0644 "$tmp/$bin.debug" "/usr/local/bin/.debug/$bin.debug"
  install -m 0755 "$tmp/$bin" "/usr/local/bin/$bin"
  rm -rf "$tmp"
done
# The VM runtime's guest: Debian's kernel + an initramfs with our static agent as /init.
MOAT_RUNTIME=/usr/local/bin/moat-runtime bash scripts/guest-assets.sh /var/lib/moat-runtime/assets
# A busybox image for first pods (nothing can be pulled from the internet on our machines):
# built from Debian's busybox-static and imported into the node's image store. Tagged
# `local`, not `latest`: a `:latest` image defaults to imagePullPolicy Always, as in Kubernetes.
bash scripts/busybox-image.sh /var/lib/moat/busybox-image >/dev/null
moat image import --root /var/lib/moat/images --name localhost/busybox:local \
  /var/lib/moat/busybox-image/busybox.oci.tar >/dev/null
[ "${1:-}" = "--no-run" ] && exit 0
echo "starting moat server (control plane + this host as a node; runc pods, and RuntimeClass handler kata in VMs)"
echo "in another shell: export KUBECONFIG=/var/lib/moat/kubeconfig.yaml; kubectl get nodes"
exec moat server --data-dir /var/lib/moat
