#!/usr/bin/env bash
# NetworkPolicy engine benchmark: compile/apply times, incremental updates, rule counts, and
# datapath cost (throughput, connect latency) with 0 vs 1,000 policies. Needs root; works
# only inside network namespaces it creates.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -q -p moat-netlab --example netpol_bench
