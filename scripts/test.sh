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
cargo nextest run --workspace --profile ci --no-fail-fast
