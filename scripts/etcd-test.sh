#!/usr/bin/env bash
# The etcd side of the store, by hand or as a subset of the suite.
#   scripts/etcd-test.sh run [PORT]  - a throwaway single-member etcd (Debian's etcd-server) on
#                                      127.0.0.1:PORT (default 2379), data in a temp dir removed
#                                      on exit; then: moat server --datastore-endpoint http://127.0.0.1:PORT
#   scripts/etcd-test.sh test        - every test that runs against a real etcd (each test
#                                      starts its own etcd on free loopback ports)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
case "${1:-}" in
  run)
    port="${2:-2379}"
    dir="$(mktemp -d /tmp/moat-etcd.XXXXXX)"
    trap 'rm -rf "$dir"' EXIT
    echo "etcd on http://127.0.0.1:$port (data in $dir); Ctrl-C stops it" >&2
    # Not exec: the trap must run after etcd exits. Progress notifications every 5 s give
    # watch bookmarks (etcd's default is 10 min).
    etcd --name moat-dev --data-dir "$dir" \
      --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
      --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
      --initial-cluster "moat-dev=http://127.0.0.1:$((port + 1))" \
      --experimental-watch-progress-notify-interval 5s
    ;;
  test)
    cargo build -p moat --bins
    cargo nextest run -p moat-store --test etcd --no-fail-fast
    cargo nextest run -p moat --test etcd_server --test server_kubectl --test paging --no-fail-fast -E 'test(/etcd/)'
    ;;
  *)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
