#!/usr/bin/env bash
# Pod network benchmark (issue 13): TCP throughput (iperf3) and 1-byte TCP request/response
# latency (bench/podnet_helper.py, p50/p99 of ROUND_TRIPS round trips) for
#   veth        a bare veth pair between two namespaces this script creates (the baseline)
#   same-node   pod <-> pod on one node (veth -> cni0 -> veth), in each cluster
#   host-gw     pod <-> pod across nodes of a `moat cluster --backend host-gw`
#   vxlan       pod <-> pod across nodes of a `moat cluster --backend vxlan`
# and route convergence: the time from creating a Node object (podCIDR + flannel annotations,
# no process behind it) until every node's routing table has its route (vxlan: and its VTEP
# neighbour), and from deleting it until the route is gone; CONVERGE_REPS times per backend,
# p50/max, once straight against the API server (the agents' reaction) and once with
# `kubectl create`/`kubectl delete` (what a user sees, kubectl's start-up included). Both clusters live side by side and the datapath measurements are
# interleaved over ROUNDS rounds (median per path), so the ratios compare like with like on a
# shared machine. Prints ratios against same-node and against the bare veth, and each path's MTU.
# Needs root, iperf3 (scripts/deps.sh), kubectl and busybox-static. Everything runs inside
# namespaces this script or `moat cluster` creates, under ROOT (default /tmp/pnb), all
# deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/tmp/pnb}
SECS=${SECONDS_PER_RUN:-5}
ROUND_TRIPS=${ROUND_TRIPS:-2000}
ROUNDS=${ROUNDS:-5}
REPS=${CONVERGE_REPS:-10}
KUBECTL=${KUBECTL:-kubectl}
for tool in iperf3 "$KUBECTL" nsenter python3 busybox; do
  command -v "$tool" >/dev/null || { echo "podnet.sh: $tool missing (scripts/deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "podnet.sh: needs root" >&2; exit 1; }
[ -e "$ROOT" ] && { echo "podnet.sh: $ROOT exists (a previous run?); remove it first" >&2; exit 1; }

if [ -z "${MOAT:-}" ]; then # MOAT=path skips the build (e.g. a trial run with a debug build)
  nice -n 10 cargo build --release -q --bin moat
  MOAT=$PWD/target/release/moat
fi
HELPER=$PWD/bench/podnet_helper.py
HG=pbh VX=pbv          # cluster names: namespaces moat-pbh-1.., moat-pbv-1..
VA=pnb-veth-a VB=pnb-veth-b
clusters=()
bg=()

cleanup() {
  set +e
  for p in "${bg[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  for c in "${clusters[@]}"; do
    "$MOAT" cluster --root "$ROOT" delete --name "$c" >/dev/null 2>&1 ||
      echo "podnet.sh: deleting cluster $c failed; see $ROOT" >&2
  done
  for n in $VA $VB; do [ -e "/run/netns/$n" ] && ip netns del "$n"; done
  if grep -q " $ROOT[/ ]" /proc/self/mountinfo; then
    echo "podnet.sh: mounts left under $ROOT; not removing it" >&2
  else
    rm -rf "$ROOT"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "# $*" >&2; }

kc() { # cluster args...
  local c=$1
  shift
  "$KUBECTL" --kubeconfig "$ROOT/$c/kubeconfig.yaml" "$@"
}

# --- clusters and pods --------------------------------------------------------------------
mkdir -p "$ROOT"
log "busybox image"
bash scripts/busybox-image.sh "$ROOT/img" >/dev/null
"$MOAT" image --root "$ROOT/images" import "$ROOT/img/busybox.oci.tar" \
  --name localhost/busybox:latest >/dev/null

pod_yaml() { # name node
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $2
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: localhost/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, "1000000"]}
EOF
}

for pair in "$HG host-gw" "$VX vxlan"; do
  set -- $pair
  log "cluster $1 ($2, 3 nodes)"
  clusters+=("$1")
  "$MOAT" cluster --root "$ROOT" create --name "$1" --nodes 3 --backend "$2" \
    --image-root "$ROOT/images" >/dev/null
  # a and b share node 1; c is on node 2.
  { pod_yaml a "$1-1"; echo ---; pod_yaml b "$1-1"; echo ---; pod_yaml c "$1-2"; } |
    kc "$1" apply -f - >/dev/null
done

declare -A IP NS
for c in $HG $VX; do
  for p in a b c; do
    for _ in $(seq 600); do
      phase=$(kc "$c" get pod "$p" -o jsonpath='{.status.phase} {.status.podIP} {.metadata.uid}' 2>/dev/null || true)
      set -- $phase
      [ "${1:-}" = Running ] && [ -n "${2:-}" ] && break
      sleep 0.2
    done
    [ "${1:-}" = Running ] || { echo "podnet.sh: pod $p in $c is not running: $phase" >&2; exit 1; }
    node=$([ $p = c ] && echo "$c-2" || echo "$c-1")
    IP[$c/$p]=$2
    NS[$c/$p]=$ROOT/$c/$node/run/netns/$3
    [ -e "${NS[$c/$p]}" ] || { echo "podnet.sh: no netns file ${NS[$c/$p]}" >&2; exit 1; }
  done
done

# --- the baseline: a bare veth pair ----------------------------------------------------------
ip netns add $VA
ip netns add $VB
ip -n $VA link add eth0 type veth peer name eth0 netns $VB
ip -n $VA addr add 10.99.0.1/30 dev eth0
ip -n $VB addr add 10.99.0.2/30 dev eth0
for n in $VA $VB; do ip -n $n link set lo up; ip -n $n link set eth0 up; done
IP[veth/a]=10.99.0.1 IP[veth/c]=10.99.0.2
NS[veth/a]=/run/netns/$VA NS[veth/c]=/run/netns/$VB

# --- datapath -------------------------------------------------------------------------------
wait_listen() { # netns-file port
  for _ in $(seq 100); do
    nsenter --net="$1" ss -Hltn "sport = :$2" | grep -q . && return 0
    sleep 0.05
  done
  echo "podnet.sh: nothing listens on $2 in $1" >&2
  exit 1
}

declare -A GBPS P50 P99
measure() { # path client-key server-key; appends one sample per metric
  local path=$1 cl=$2 sv=$3 s c ip out
  s=${NS[$sv]} c=${NS[$cl]} ip=${IP[$sv]}
  nsenter --net="$s" iperf3 -s -1 -B "$ip" -p 5201 >/dev/null 2>&1 &
  bg+=($!)
  wait_listen "$s" 5201
  out=$(nsenter --net="$c" iperf3 -c "$ip" -p 5201 -t "$SECS" -O 1 -J |
    python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
  GBPS[$path]+=" $out"
  wait "${bg[-1]}" || true
  nsenter --net="$s" python3 "$HELPER" echo-server "$ip" 5202 >/dev/null &
  bg+=($!)
  wait_listen "$s" 5202
  read -r p50 p99 _ < <(nsenter --net="$c" python3 "$HELPER" rr "$ip" 5202 "$ROUND_TRIPS")
  wait "${bg[-1]}" || true
  P50[$path]+=" $p50" P99[$path]+=" $p99"
  log "round $r $path: $out Gbit/s, rr p50 $p50 us p99 $p99 us"
}

for r in $(seq "$ROUNDS"); do
  measure veth veth/a veth/c
  measure same-node/host-gw $HG/a $HG/b
  measure host-gw $HG/a $HG/c
  measure same-node/vxlan $VX/a $VX/b
  measure vxlan $VX/a $VX/c
done

med() { printf '%s\n' $1 | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# The median of the per-round ratios: both sides of each ratio were measured back to back, so
# the machine's load (shared, it varies minute to minute) cancels better than in a ratio of
# two medians.
ratio() { python3 -c "import statistics as s; a='$1'.split(); b='$2'.split(); print('%.2f' % s.median(float(x) / float(y) for x, y in zip(a, b)))"; }
mtu() { nsenter --net="$1" ip -o link show eth0 | sed -n 's/.* mtu \([0-9]*\).*/\1/p'; }

echo "== pod network datapath (median of $ROUNDS rounds; iperf3 -t $SECS single TCP stream; rr = $ROUND_TRIPS round trips of 1 byte, python, TCP_NODELAY)"
printf '%-18s %10s %10s %10s %6s\n' path Gbit/s "rr p50 us" "rr p99 us" MTU
declare -A M50 MG M99
for p in veth same-node/host-gw host-gw same-node/vxlan vxlan; do
  MG[$p]=$(med "${GBPS[$p]}") M50[$p]=$(med "${P50[$p]}") M99[$p]=$(med "${P99[$p]}")
done
printf '%-18s %10s %10s %10s %6s\n' veth "${MG[veth]}" "${M50[veth]}" "${M99[veth]}" "$(mtu "${NS[veth/a]}")"
printf '%-18s %10s %10s %10s %6s\n' same-node/host-gw "${MG[same-node/host-gw]}" "${M50[same-node/host-gw]}" "${M99[same-node/host-gw]}" "$(mtu "${NS[$HG/a]}")"
printf '%-18s %10s %10s %10s %6s\n' host-gw "${MG[host-gw]}" "${M50[host-gw]}" "${M99[host-gw]}" "$(mtu "${NS[$HG/c]}")"
printf '%-18s %10s %10s %10s %6s\n' same-node/vxlan "${MG[same-node/vxlan]}" "${M50[same-node/vxlan]}" "${M99[same-node/vxlan]}" "$(mtu "${NS[$VX/a]}")"
printf '%-18s %10s %10s %10s %6s\n' vxlan "${MG[vxlan]}" "${M50[vxlan]}" "${M99[vxlan]}" "$(mtu "${NS[$VX/c]}")"
echo "vxlan device: $("$MOAT" cluster --root "$ROOT" exec --name $VX $VX-1 -- ip -o -d link show flannel.1 | grep -o '\<mtu [0-9]*\|vxlan id [0-9]*\|dstport [0-9]*' | tr '\n' ' ')"

echo "== ratios (median of the per-round ratios; each cross-node path against the same-node path of its own cluster)"
echo "host-gw / same-node throughput:   $(ratio "${GBPS[host-gw]}" "${GBPS[same-node/host-gw]}")   (goal >= 0.9)"
echo "vxlan / same-node throughput:     $(ratio "${GBPS[vxlan]}" "${GBPS[same-node/vxlan]}")   (goal >= 0.6)"
echo "host-gw / same-node rr p50:       $(ratio "${P50[host-gw]}" "${P50[same-node/host-gw]}")   (goal <= 1.2)"
echo "vxlan / same-node rr p50:         $(ratio "${P50[vxlan]}" "${P50[same-node/vxlan]}")   (goal <= 1.2)"
echo "== against the bare veth pair (median of the per-round ratios: throughput, rr p50)"
for p in same-node/host-gw host-gw same-node/vxlan vxlan; do
  printf '%-18s %6s x throughput %6s x latency\n' "$p" "$(ratio "${GBPS[$p]}" "${GBPS[veth]}")" "$(ratio "${P50[$p]}" "${P50[veth]}")"
done

# --- convergence ----------------------------------------------------------------------------
ghost_yaml() { # backend
  local data=null
  [ "$1" = vxlan ] && data='{"VNI":1,"VtepMAC":"0a:58:0a:2a:c8:01"}'
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: bench-ghost
  annotations:
    flannel.alpha.coreos.com/backend-type: "$1"
    flannel.alpha.coreos.com/backend-data: '$data'
    flannel.alpha.coreos.com/kube-subnet-manager: "true"
    flannel.alpha.coreos.com/public-ip: 172.30.0.99
spec:
  podCIDR: 10.42.200.0/24
EOF
}

mx() { printf '%s\n' $1 | sort -g | tail -1; }
col() { printf '%s\n' "$1" | awk -v c="$2" '{print $c}' | tr '\n' ' '; }

echo "== convergence: Node bench-ghost (podCIDR 10.42.200.0/24, public-ip 172.30.0.99, no process behind it) created and deleted $REPS times per backend; ms until the routes of all 3 nodes change (vxlan: route and VTEP neighbour; the slowest node), from just before the request"
for pair in "$HG host-gw" "$VX vxlan"; do
  set -- $pair
  c=$1 backend=$2
  ghost_yaml "$backend" >"$ROOT/ghost-$backend.yaml"
  want=(--want '^(?!Deleted).*10\.42\.200\.0/24')
  [ "$backend" = vxlan ] && want+=(--want '^(?!Deleted).*0a:58:0a:2a:c8:01')
  # Straight to the API server over a kept-alive connection: the agents' own reaction time.
  api=$(python3 "$HELPER" converge-api "$ROOT/$c/kubeconfig.yaml" "moat-$c-1,moat-$c-2,moat-$c-3" \
    "$ROOT/ghost-$backend.yaml" "$REPS" "${want[@]}")
  up=$(col "$api" 2) down=$(col "$api" 4)
  printf '%-8s API:     add p50 %6s max %6s   delete p50 %6s max %6s   (POST p50 %s, DELETE p50 %s)   goal < 1000\n' \
    "$backend" "$(med "$up")" "$(mx "$up")" "$(med "$down")" "$(mx "$down")" \
    "$(med "$(col "$api" 1)")" "$(med "$(col "$api" 3)")"
  # The user's view: kubectl create / delete, its start-up and TLS handshake included.
  up="" down="" kup="" kdown=""
  for _ in $(seq "$REPS"); do
    read -r k t < <(python3 "$HELPER" converge "moat-$c-1,moat-$c-2,moat-$c-3" 10 "${want[@]}" -- \
      "$KUBECTL" --kubeconfig "$ROOT/$c/kubeconfig.yaml" create -f "$ROOT/ghost-$backend.yaml")
    [ "$t" = -1 ] && { echo "podnet.sh: $backend: no route to bench-ghost after 10 s" >&2; exit 1; }
    up+=" $t" kup+=" $k"
    read -r k t < <(python3 "$HELPER" converge "moat-$c-1,moat-$c-2,moat-$c-3" 10 --want '^Deleted.*10\.42\.200\.0/24' -- \
      "$KUBECTL" --kubeconfig "$ROOT/$c/kubeconfig.yaml" delete node bench-ghost)
    [ "$t" = -1 ] && { echo "podnet.sh: $backend: route to bench-ghost still there 10 s after delete" >&2; exit 1; }
    down+=" $t" kdown+=" $k"
  done
  printf '%-8s kubectl: add p50 %6s max %6s   delete p50 %6s max %6s   (kubectl create p50 %s, delete p50 %s)\n' \
    "$backend" "$(med "$up")" "$(mx "$up")" "$(med "$down")" "$(mx "$down")" "$(med "$kup")" "$(med "$kdown")"
done
