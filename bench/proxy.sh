#!/usr/bin/env bash
# Service proxy benchmark: full sync at 10,000 Services / 50,000 endpoints with the real
# `nft -f`, one-endpoint and one-Service incremental syncs, and TCP connect latency through a
# ClusterIP (10 vs 10,000 Services, and vs the pod IP). Needs root; works only inside network
# namespaces it creates.
set -euo pipefail
cd "$(dirname "$0")/.."
exec nice -n 10 cargo run --release -q -p moat-proxy --example proxy-bench
