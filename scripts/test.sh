#!/usr/bin/env bash
# README command 2: the whole test suite (lint, unit, integration against real kubectl,
# kernel, runc and QEMU). Needs root. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
for pre in scripts/pretest.d/*.sh; do
  [ -e "$pre" ] || continue
  echo "== $pre"; bash "$pre"
done
# Trust-boundary fuzzing, bounded: every parser of untrusted bytes (fuzz/fuzz_targets/: VM
# frames, API request bodies, patches, SPDY frames, image layers, netpol lab manifests, DNS queries).
# Built once, then each target runs FUZZ_SECONDS (30 by default). cargo-fuzz wants nightly
# flags; RUSTC_BOOTSTRAP lets the one stable toolchain here take them.
fuzz_dir=${CARGO_TARGET_DIR:-$PWD/target}
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build) >"$fuzz_dir/fuzz-build.log" 2>&1 \
  || { tail -n 60 "$fuzz_dir/fuzz-build.log"; echo "building the fuzz targets failed"; exit 1; }
for target in vm_frames api_bodies patches spdy_frames image_layers netlab_manifests dns_queries; do
  fuzz_log=$fuzz_dir/fuzz-$target.log
  if (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="${FUZZ_SECONDS:-30}") >"$fuzz_log" 2>&1; then
    echo "== fuzz $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$fuzz_log" | tail -1)"
  else
    tail -n 60 "$fuzz_log"; echo "fuzz $target found a failure (full log: $fuzz_log)"; exit 1
  fi
done
cargo nextest run --workspace --profile ci --no-fail-fast
