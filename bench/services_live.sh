#!/usr/bin/env bash
# Service endpoint changes on the live path (issue 14, must show 3's "within 1 s"): on a
# 3-node `moat cluster` (vxlan, release binaries), Deployment `web` (busybox httpd, readiness
# probe every second) behind Service `web`, REPS times: scale 3 -> 1 and 1 -> 0. For each, the
# time from the scale request until the EndpointSlice shows the change (the API's view, the
# baseline) and until every node's `moat-proxy` nft table changed (`nft monitor` in each
# node's namespace): the ratio nodes/API is what the proxies add, and
# the goal is every node updated within 1 s. Needs root, kubectl, python3-yaml. Everything
# runs inside namespaces `moat cluster` creates, under ROOT (default /tmp/svlb), deleted on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/tmp/svlb}
NAME=services_live.sh
REPS=${REPS:-10}
KUBECTL=${KUBECTL:-kubectl}
# shellcheck source=bench/cluster_lib.sh
. bench/cluster_lib.sh
need "$KUBECTL" python3 nft
moat_binary
HELPER=$PWD/bench/netpol_live.py
C=svlb
trap clusters_down EXIT
trap 'exit 130' INT TERM
kc() { "$KUBECTL" --kubeconfig "$ROOT/$C/kubeconfig.yaml" "$@"; }
cluster_up "$C" vxlan 3
kc apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: localhost/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML
log "$REPS reps of scale 3 -> 1 -> 0"
declare -A API NODES
while read -r what api nodes; do
  API[$what]+="$api " NODES[$what]+="$nodes "
done < <(python3 "$HELPER" endpoints "$ROOT/$C/kubeconfig.yaml" "moat-$C-1,moat-$C-2,moat-$C-3" "$REPS")
printf '\n%-14s %14s %14s %14s %14s %8s  %s\n' change "slice p50" "slice max" "nodes p50" "nodes max" ratio "goal: nodes max < 1000 ms"
for what in scale-3-to-1 scale-1-to-0; do
  # shellcheck disable=SC2086
  a50=$(pct 0.5 ${API[$what]}); amax=$(pct 1 ${API[$what]})
  # shellcheck disable=SC2086
  n50=$(pct 0.5 ${NODES[$what]}); nmax=$(pct 1 ${NODES[$what]})
  ratio=$(awk -v a="$n50" -v b="$a50" 'BEGIN {printf "%.2f", a / b}')
  verdict=$(awk -v a="$nmax" 'BEGIN {print (a < 1000) ? "met" : "NOT met"}')
  printf '%-14s %11s ms %11s ms %11s ms %11s ms %7sx  %s\n' "$what" "$a50" "$amax" "$n50" "$nmax" "$ratio" "$verdict"
done
echo "(ms from just before the scale request; slice: until the EndpointSlice shows the ready"
echo " endpoints the change leaves; nodes: until all 3 nodes' moat-proxy tables changed)"
