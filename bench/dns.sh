#!/usr/bin/env bash
# Cluster DNS benchmark: moat-dns against dnsmasq answering the same names from a hosts
# file, both on 127.0.0.1, measured by dnsperf with the same query file in the same run.
# Prints queries/s and latency for each and the ratio moat/dnsmasq (no absolute targets:
# the machine is shared). Knobs: N (services, default 1000), SECONDS_PER_RUN (default 10),
# CLIENTS (dnsperf -c, default 4), OUTSTANDING (dnsperf -q, default 100).
# Needs dnsperf and dnsmasq (scripts/deps.sh installs dnsperf and dnsmasq-base).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
SECS=${SECONDS_PER_RUN:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
for tool in dnsperf dnsmasq; do
  command -v "$tool" >/dev/null || { echo "dns.sh: $tool missing (scripts/deps.sh installs it)" >&2; exit 1; }
done

nice -n 10 cargo build --release -q -p moat-dns --example dns-bench-server
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_answer() { # port name
  for _ in $(seq 100); do
    if dig @127.0.0.1 -p "$1" +time=1 +tries=1 +short "$2" A 2>/dev/null | grep -q .; then return 0; fi
    sleep 0.1
  done
  echo "dns.sh: nothing answers on port $1" >&2
  exit 1
}

moat_port=$(free_port)
target/release/examples/dns-bench-server "$moat_port" "$N" "$dir" >"$dir/moat.log" 2>&1 &
pids+=($!)
wait_answer "$moat_port" svc-0.bench.svc.cluster.local

dnsmasq_port=$(free_port)
dnsmasq --no-daemon --no-resolv --no-hosts --addn-hosts="$dir/hosts" --port="$dnsmasq_port" \
  --listen-address=127.0.0.1 --bind-interfaces --user=root --pid-file="$dir/dnsmasq.pid" \
  --log-facility="$dir/dnsmasq.log" >"$dir/dnsmasq.out" 2>&1 &
pids+=($!)
wait_answer "$dnsmasq_port" svc-0.bench.svc.cluster.local

# Both answer every name in the query file the same way.
for name in svc-0 "svc-$((N / 2))" "svc-$((N - 1))"; do
  a=$(dig @127.0.0.1 -p "$moat_port" +short "$name.bench.svc.cluster.local" A)
  b=$(dig @127.0.0.1 -p "$dnsmasq_port" +short "$name.bench.svc.cluster.local" A)
  [ "$a" = "$b" ] || { echo "dns.sh: $name: moat '$a' dnsmasq '$b'" >&2; exit 1; }
done

run() { # label port -> "qps avg_ms lost"
  local out
  out=$(dnsperf -s 127.0.0.1 -p "$2" -d "$dir/queries" -l "$SECS" -c "$CLIENTS" -q "$OUTSTANDING" 2>&1)
  echo "$out" >"$dir/$1.dnsperf"
  local qps lat lost
  qps=$(awk '/Queries per second:/ {print $4}' <<<"$out")
  lat=$(awk '/Average Latency \(s\):/ {printf "%.3f", $4 * 1000}' <<<"$out")
  lost=$(awk '/Queries lost:/ {print $3}' <<<"$out")
  echo "$qps $lat $lost"
}

echo "dns.sh: $N services, dnsperf -c $CLIENTS -q $OUTSTANDING for ${SECS}s each, 127.0.0.1"
read -r m_qps m_lat m_lost <<<"$(run moat "$moat_port")"
read -r d_qps d_lat d_lost <<<"$(run dnsmasq "$dnsmasq_port")"
printf '%-8s %12s %14s %8s\n' server "queries/s" "avg latency ms" lost
printf '%-8s %12s %14s %8s\n' moat "$m_qps" "$m_lat" "$m_lost"
printf '%-8s %12s %14s %8s\n' dnsmasq "$d_qps" "$d_lat" "$d_lost"
awk -v m="$m_qps" -v d="$d_qps" -v ml="$m_lat" -v dl="$d_lat" \
  'BEGIN { printf "ratio moat/dnsmasq: throughput %.2fx, latency %.2fx\n", m / d, (dl > 0 ? ml / dl : 0) }'
