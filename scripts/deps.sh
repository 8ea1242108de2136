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
  # VM runtime: hypervisor; Debian's kernel image is fetched by moat-runtime assets build
  # (apt-get download, never installed); our guest kernel is built from linux-source-6.1
  qemu-system-x86 busybox-static cpio zstd
  linux-source-6.1 make gcc flex bison bc libelf-dev libssl-dev xz-utils
  # networking
  nftables iproute2 containernetworking-plugins conntrack iperf3 socat
  # cluster DNS tests and benchmark: real clients (dig, busybox nslookup), dnsperf, dnsmasq
  dnsutils dnsperf dnsmasq-base
  # image registry for tests
  docker-registry apache2-utils
  # build tools
  protobuf-compiler libprotobuf-dev pkg-config jq curl ca-certificates
  # the official Python client test (tests/python_client.rs pip-installs `kubernetes`)
  python3 python3-venv python3-pip
)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian enables and starts services when some of these packages are installed (etcd-server,
# docker-registry, containerd; podman's socket and timers); moat and its tests start their
# own, so the ones of packages installed by this run are disabled and stopped: nothing the
# user did not ask for keeps running. A package that was already there keeps whatever its
# owner set up.
units_of() {
  case "$1" in
    etcd-server) echo etcd.service ;;
    docker-registry) echo docker-registry.service ;;
    containerd) echo containerd.service ;;
    podman) echo podman.socket podman.service podman-restart.service podman-auto-update.timer ;;
  esac
}
for p in "${missing[@]}"; do
  for u in $(units_of "$p"); do
    # `disable` works without a running systemd (it removes the enablement links).
    systemctl disable --quiet "$u" >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then
      systemctl stop "$u" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/${u%.service}" ]; then
      "/etc/init.d/${u%.service}" stop >/dev/null 2>&1 || true
    fi
  done
done
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The fuzz targets (fuzz/) run in the test suite for a bounded time.
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
