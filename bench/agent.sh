#!/usr/bin/env bash
# Pod start latency of the moat node agent against containerd + runc (`ctr run`), in the same
# run on the same machine and image. Starts N pods (default 50) one after another and then N in
# parallel, and prints p50/p99 create→Running for both, side by side, with the ratio.
#
#   moat: POST the pod to the API → the agent's status patch says Running (netns + CNI bridge
#         + overlay rootfs + runc create/start through the shim + pods/status).
#   ctr:  `ctr run -d` of the same image with runc (own netns, no CNI) until it returns.
#
# Everything runs inside a network namespace made for the run (no route out), with its own
# containerd (own root, state and socket); all is torn down at exit.
# Then: one pod's start while 20 pods wait out a 30 s grace period, against the same on the
# idle node (ratio), and how long the 20 take to go.
# Usage: bench/agent.sh [N]   (root; needs target/…/moat built, containerd, ctr, python3)
set -euo pipefail
N=${1:-50}
cd "$(dirname "$0")/.."
MOAT=${MOAT:-$( (ls -t "${CARGO_TARGET_DIR:-target}"/{release,debug}/moat 2>/dev/null || true) | head -1)}
[ -x "$MOAT" ] || { echo "build moat first (cargo build -p moat)" >&2; exit 1; }
NS=moat-bench-$$
W=$(mktemp -d /tmp/moat-bench.XXXXXX)
SERVER_PID=
CTRD_PID=

cleanup() {
    set +e
    # Let the agent tear its pods down (CNI DEL, netns, mounts, cgroups) before it stops.
    [ -n "$SERVER_PID" ] && timeout 120 nsenter --net="/run/netns/$NS" kubectl \
        --kubeconfig "$W/kubeconfig.yaml" delete pods --all --wait >/dev/null 2>&1
    # SIGKILL: a graceful API server shutdown would wait for the agent's own watch.
    [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    for root in "$W/run/runtime/runc"; do
        for id in $(runc --root "$root" list -q 2>/dev/null); do runc --root "$root" delete --force "$id"; done
    done
    if [ -n "$CTRD_PID" ]; then
        for id in $(ctr -a "$W/ctrd.sock" -n bench tasks ls -q 2>/dev/null); do
            ctr -a "$W/ctrd.sock" -n bench tasks kill -s SIGKILL "$id" >/dev/null 2>&1
        done
        sleep 1
        for id in $(ctr -a "$W/ctrd.sock" -n bench containers ls -q 2>/dev/null); do
            ctr -a "$W/ctrd.sock" -n bench tasks delete -f "$id" >/dev/null 2>&1
            ctr -a "$W/ctrd.sock" -n bench containers delete "$id" >/dev/null 2>&1
        done
        kill -9 "$CTRD_PID" 2>/dev/null; wait "$CTRD_PID" 2>/dev/null
    fi
    grep " $W" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
    ip netns del "$NS" 2>/dev/null
    rm -rf "$W" 2>/dev/null || { sleep 1; rm -rf "$W"; }
}
trap cleanup EXIT
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

ip netns add "$NS"
ip -n "$NS" link set lo up
bash scripts/busybox-image.sh "$W/img" >/dev/null
"$MOAT" image --root "$W/images" import "$W/img/busybox.oci.tar" --name localhost/busybox:latest >/dev/null
mkdir -p "$W/cni-conf"

# nsenter execs the program, so $! is the server itself (not a subshell).
nsenter --net="/run/netns/$NS" "$MOAT" server --listen 127.0.0.1:0 --agent --agent-listen off --disable-controllers \
    --data-dir "$W" --node-name bench --pod-cidr 10.42.99.0/24 --run-dir "$W/run" \
    --log-dir "$W/logs" --image-root "$W/images" --cni-conf-dir "$W/cni-conf" \
    >"$W/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$W/kubeconfig.yaml" ] && break; sleep 0.1; done
[ -s "$W/kubeconfig.yaml" ] || { cat "$W/server.log"; exit 1; }
# The node is registered by the agent; pods are bound to it directly (no scheduler).
for _ in $(seq 100); do in_ns kubectl --kubeconfig "$W/kubeconfig.yaml" get node bench >/dev/null 2>&1 && break; sleep 0.1; done

# moat: create→Running per pod, through the API, sequential then parallel.
in_ns python3 - "$W/kubeconfig.yaml" "$N" >"$W/moat.txt" <<'PY'
import base64, json, ssl, sys, tempfile, threading, time, urllib.error, urllib.request
import re
kc = open(sys.argv[1]).read()
n = int(sys.argv[2])
server = re.search(r"server: (\S+)", kc).group(1)
ca = base64.b64decode(re.search(r"certificate-authority-data: (\S+)", kc).group(1))
token = re.search(r"token: (\S+)", kc).group(1)
caf = tempfile.NamedTemporaryFile(delete=False); caf.write(ca); caf.close()
ctx = ssl.create_default_context(cafile=caf.name)
H = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

def call(method, path, body=None):
    req = urllib.request.Request(server + path, method=method, headers=H,
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, context=ctx) as r:
        return json.loads(r.read())

def pod(name):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "bench", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "localhost/busybox:latest",
                                     "imagePullPolicy": "IfNotPresent",
                                     "command": ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 & wait"]}]}}

def running(name):
    return call("GET", f"/api/v1/namespaces/default/pods/{name}")["status"].get("phase") == "Running"

def one(name, out):
    t0 = time.monotonic()
    call("POST", "/api/v1/namespaces/default/pods", pod(name))
    while not running(name):
        time.sleep(0.01)
    out.append(time.monotonic() - t0)

seq = []
for i in range(n):
    one(f"seq-{i}", seq)
par = []
ts = [threading.Thread(target=one, args=(f"par-{i}", par)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print("seq", " ".join(f"{x:.4f}" for x in seq))
print("par", " ".join(f"{x:.4f}" for x in par))

# A pod created while 20 pods wait out a 30 s grace period (their PID 1, `sleep`, ignores
# SIGTERM), against the same pod's start on the idle node: no pod waits for another.
def slow(name):
    p = pod(name)
    p["metadata"]["labels"] = {"grp": "slow"}
    p["spec"]["terminationGracePeriodSeconds"] = 30
    p["spec"]["containers"][0]["command"] = ["sleep", "3600"]
    return p
def gone(name):
    try:
        call("GET", f"/api/v1/namespaces/default/pods/{name}")
        return False
    except urllib.error.HTTPError as e:
        return e.code == 404
idle = []
one("idle-0", idle)
for i in range(20):
    call("POST", "/api/v1/namespaces/default/pods", slow(f"slow-{i}"))
while not all(running(f"slow-{i}") for i in range(20)):
    time.sleep(0.1)
t0 = time.monotonic()
for i in range(20):
    call("DELETE", f"/api/v1/namespaces/default/pods/slow-{i}")
busy = []
one("busy-0", busy)
while not all(gone(f"slow-{i}") for i in range(20)):
    time.sleep(0.1)
print("idle", f"{idle[0]:.4f}")
print("busy", f"{busy[0]:.4f}")
print("gone", f"{time.monotonic() - t0:.4f}")
PY

# Baseline: containerd + runc from Debian, same image, same count, in the same netns.
printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' >"$W/ctrd.toml"
nsenter --net="/run/netns/$NS" containerd --root "$W/ctrd-root" --state "$W/ctrd-state" --address "$W/ctrd.sock" \
    --config "$W/ctrd.toml" >"$W/ctrd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do [ -S "$W/ctrd.sock" ] && break; sleep 0.1; done
CTR=(ctr -a "$W/ctrd.sock" -n bench)
"${CTR[@]}" images import "$W/img/busybox.docker.tar" >/dev/null
IMG=localhost/busybox:latest
ctr_one() {
    local t0 t1
    t0=$(date +%s%N)
    in_ns "${CTR[@]}" run -d "$IMG" "$1" sh -c "trap 'exit 0' TERM; httpd -f -p 8080 & wait" >/dev/null
    t1=$(date +%s%N)
    awk "BEGIN { printf \"%.4f\", ($t1 - $t0) / 1e9 }"
}
{
    printf 'seq'
    for i in $(seq "$N"); do printf ' %s' "$(ctr_one "seq-$i")"; done
    echo
    printf 'par'
    pids=()
    for i in $(seq "$N"); do ctr_one "par-$i" >"$W/ctr-par-$i" & pids+=($!); done
    wait "${pids[@]}"
    for i in $(seq "$N"); do printf ' %s' "$(cat "$W/ctr-par-$i")"; done
    echo
} >"$W/ctr.txt"

python3 - "$W/moat.txt" "$W/ctr.txt" "$N" <<'PY'
import sys
def load(p):
    d = {}
    for line in open(p):
        k, *v = line.split()
        d[k] = sorted(float(x) for x in v)
    return d
def pct(xs, p):
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
m, c = load(sys.argv[1]), load(sys.argv[2])
print(f"pod start latency, {sys.argv[3]} pods (seconds): moat agent (API→Running) vs ctr run (containerd 1.6 + runc)")
print(f"{'mode':<11}{'moat p50':>10}{'moat p99':>10}{'ctr p50':>10}{'ctr p99':>10}{'p50 ratio':>11}{'p99 ratio':>11}")
for k, label in (("seq", "sequential"), ("par", "parallel")):
    mp50, mp99, cp50, cp99 = pct(m[k], 50), pct(m[k], 99), pct(c[k], 50), pct(c[k], 99)
    print(f"{label:<11}{mp50:>10.3f}{mp99:>10.3f}{cp50:>10.3f}{cp99:>10.3f}{mp50 / cp50:>10.2f}x{mp99 / cp99:>10.2f}x")
idle, busy, gone = m["idle"][0], m["busy"][0], m["gone"][0]
print(f"pod start while 20 pods terminate (grace 30 s, SIGTERM ignored): {busy:.3f} s vs {idle:.3f} s on the idle node: {busy / idle:.2f}x (goal <= 1.2x)")
print(f"the 20 terminating pods gone after {gone:.1f} s (goal <= 35 s: grace + 5)")
PY
