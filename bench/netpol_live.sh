#!/usr/bin/env bash
# NetworkPolicy on the live path (issue 15, must show 6): on a 3-node `moat cluster` (vxlan,
# release binaries) with one running pod per node labelled app=bench, the time from an API
# request until every node has changed its nftables policy table (`nft monitor` in each
# node's namespace, stamped when the line is read), for
#   policy-add     a NetworkPolicy selecting the bench pods (all three nodes program it)
#   label-change   a peer pod's label flipped (in or out of the policy's peers)
#   pod-add        a new peer pod gets its podIP
#   policy-delete  the policy deleted
# REPS times each, first on the bare cluster (the baseline) and then after loading LOAD_PODS
# pod objects with addresses (bound to a Node `ghost` without an agent) and LOAD_POLICIES
# policies over them (defaults 5,000 / 1,000, the issue's scale). Prints p50/max of the
# slowest node per change, the ratio loaded/bare, and the goal (< 50 ms to the kernel).
# Needs root, kubectl, python3-yaml. Everything runs inside namespaces `moat cluster`
# creates, under ROOT (default /tmp/nplb), deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/tmp/nplb}
NAME=netpol_live.sh
REPS=${REPS:-10}
LOAD_PODS=${LOAD_PODS:-5000}
LOAD_POLICIES=${LOAD_POLICIES:-1000}
KUBECTL=${KUBECTL:-kubectl}
# shellcheck source=bench/cluster_lib.sh
. bench/cluster_lib.sh
need "$KUBECTL" python3 nft
moat_binary
HELPER=$PWD/bench/netpol_live.py
C=nplb
trap clusters_down EXIT
trap 'exit 130' INT TERM
kc() { "$KUBECTL" --kubeconfig "$ROOT/$C/kubeconfig.yaml" "$@"; }
cluster_up "$C" vxlan 3
for i in 1 2 3; do
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: bench-$i, labels: {app: bench}}
spec:
  nodeName: $C-$i
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: localhost/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, "1000000"]}
---
YAML
done | kc apply -f - >/dev/null
kc wait --for=condition=Ready pod -l app=bench --timeout=120s >/dev/null
NETNS=moat-$C-1,moat-$C-2,moat-$C-3
KCFG=$ROOT/$C/kubeconfig.yaml

declare -A SAMPLES
run_measure() { # phase
  python3 "$HELPER" load "$KCFG" 0 0 >/dev/null 2>&1 || true
  while read -r what slow _fast; do
    SAMPLES[$1/$what]+="$slow "
  done < <(python3 "$HELPER" measure "$KCFG" "$NETNS" "$REPS")
}
log "bare cluster: $REPS reps"
run_measure bare
log "loading $LOAD_PODS pods with addresses and $LOAD_POLICIES policies"
rate=$(python3 "$HELPER" load "$KCFG" "$LOAD_PODS" "$LOAD_POLICIES")
log "loaded ($rate pods/s incl. status); letting the nodes settle"
sleep 10
# The peers of the first phase go (no agent runs their node: forced, as for a lost node).
for r in $(seq 0 "$REPS"); do
  kc delete pod -n load "peer-$r" --ignore-not-found --grace-period=0 --force >/dev/null 2>&1
done
log "loaded cluster: $REPS reps"
run_measure loaded

printf '\n%-14s %12s %12s %12s %12s %8s  %s\n' change "bare p50" "bare max" "load p50" "load max" ratio "goal < 50 ms (load p50)"
for what in policy-add label-change pod-add policy-delete; do
  # shellcheck disable=SC2086
  b50=$(pct 0.5 ${SAMPLES[bare/$what]}); bmax=$(pct 1 ${SAMPLES[bare/$what]})
  # shellcheck disable=SC2086
  l50=$(pct 0.5 ${SAMPLES[loaded/$what]}); lmax=$(pct 1 ${SAMPLES[loaded/$what]})
  ratio=$(awk -v a="$l50" -v b="$b50" 'BEGIN {printf "%.2f", a / b}')
  verdict=$(awk -v a="$l50" 'BEGIN {print (a < 50) ? "met" : "NOT met"}')
  printf '%-14s %10s ms %10s ms %10s ms %10s ms %7sx  %s\n' "$what" "$b50" "$bmax" "$l50" "$lmax" "$ratio" "$verdict"
done
echo "(ms from just before the API request until the slowest of the 3 nodes changed its ruleset;"
echo " loaded: $LOAD_PODS pods with addresses and $LOAD_POLICIES policies in the cluster)"
