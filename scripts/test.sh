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
# Trust boundary fuzzing, bounded: the guest-agent frame decoder. cargo-fuzz wants nightly
# flags; RUSTC_BOOTSTRAP lets the one stable toolchain here take them.
fuzz_log=${CARGO_TARGET_DIR:-target}/fuzz-vm_frames.log
if (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run vm_frames -- -max_total_time="${FUZZ_SECONDS:-60}") >"$fuzz_log" 2>&1; then
  echo "== fuzz vm_frames: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$fuzz_log" | tail -1)"
else
  tail -n 60 "$fuzz_log"; echo "fuzz vm_frames found a failure (full log: $fuzz_log)"; exit 1
fi
cargo nextest run --workspace --profile ci --no-fail-fast
