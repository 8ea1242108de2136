#!/usr/bin/env bash
# Installs everything moat and its tests need on a fresh Debian 12 machine (as root).
# Idempotent: safe to run again. Packages only from Debian; tools only from crates.io.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(
  # container runtimes and their peers
  runc crun containerd podman
  # datastore for HA mode and its tests
  etcd-server etcd-client
  # VM runtime: hypervisor, guest kernel source package is fetched by moat-runtime assets build
  qemu-system-x86 busybox-static cpio zstd
  # networking
  nftables iproute2 containernetworking-plugins conntrack iperf3 socat
  # image registry for tests
  docker-registry apache2-utils
  # build tools
  protobuf-compiler libprotobuf-dev pkg-config jq curl ca-certificates
)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's docker-registry and containerd start services on install; tests start their own.
systemctl disable --now docker-registry containerd >/dev/null 2>&1 || true
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The fuzz targets (fuzz/) run in the test suite for a bounded time.
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
