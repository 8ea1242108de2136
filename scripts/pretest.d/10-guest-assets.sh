#!/usr/bin/env bash
# The VM runtime tests boot real sandboxes: they need the guest kernel, initramfs and agent.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/guest-assets.sh
# The busybox image the podman tests load.
bash scripts/busybox-image.sh "${CARGO_TARGET_DIR:-target}/busybox-image" >/dev/null
