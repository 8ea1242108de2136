#!/usr/bin/env bash
# What the Job machinery costs over bare pods, in the same run on the same machine: N short
# pods (busybox `true`, restartPolicy Never) created at once through the API and scheduler,
# timed create→Succeeded; then N Jobs of the same pod created at once, timed
# create→Complete. Prints completions per second and p50/p99 for both, and the ratios
# (the issue's target: Jobs cost < 1.3x bare pods).
#
# Runs `moat server --agent` (scheduler and controllers on, real runc pods) inside a network
# namespace made for the run (no route out); everything is torn down at exit.
# Usage: bench/jobs.sh [N]   (root; needs target/…/moat built and python3; default N=100,
#                             the issue's figure is 500)
set -euo pipefail
N=${1:-100}
cd "$(dirname "$0")/.."
MOAT=${MOAT:-$( (ls -t "${CARGO_TARGET_DIR:-target}"/{release,debug}/moat 2>/dev/null || true) | head -1)}
[ -x "$MOAT" ] || { echo "build moat first (cargo build -p moat)" >&2; exit 1; }
NS=moat-bench-jobs-$$
W=$(mktemp -d /tmp/moat-bench-jobs.XXXXXX)
SERVER_PID=

in_ns() { nsenter --net="/run/netns/$NS" "$@"; }
kc() { in_ns kubectl --kubeconfig "$W/kubeconfig.yaml" "$@"; }

cleanup() {
    set +e
    # Let the agent tear its pods down before it stops.
    [ -n "$SERVER_PID" ] && timeout 300 kc delete jobs --all --wait >/dev/null 2>&1
    [ -n "$SERVER_PID" ] && timeout 300 kc delete pods --all --wait >/dev/null 2>&1
    [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    for id in $(runc --root "$W/run/runtime/runc" list -q 2>/dev/null); do
        runc --root "$W/run/runtime/runc" delete --force "$id"
    done
    grep " $W" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
    ip netns del "$NS" 2>/dev/null
    rm -rf "$W" 2>/dev/null || { sleep 1; rm -rf "$W"; }
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
bash scripts/busybox-image.sh "$W/img" >/dev/null
"$MOAT" image --root "$W/images" import "$W/img/busybox.oci.tar" --name localhost/busybox:1 >/dev/null
mkdir -p "$W/cni-conf"
# nsenter execs the program, so $! is the server itself.
nsenter --net="/run/netns/$NS" "$MOAT" server --listen 127.0.0.1:0 --agent --agent-listen off \
    --data-dir "$W" --node-name bench --pod-cidr 10.42.98.0/24 --run-dir "$W/run" \
    --log-dir "$W/logs" --image-root "$W/images" --cni-conf-dir "$W/cni-conf" \
    >"$W/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$W/kubeconfig.yaml" ] && break; sleep 0.1; done
[ -s "$W/kubeconfig.yaml" ] || { cat "$W/server.log"; exit 1; }
for _ in $(seq 100); do kc get node bench >/dev/null 2>&1 && break; sleep 0.1; done

in_ns python3 - "$W/kubeconfig.yaml" "$N" <<'PY'
import base64, json, re, ssl, sys, tempfile, threading, time, urllib.request
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

POD_SPEC = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "localhost/busybox:1", "command": ["true"]}]}

def create_all(path, objs):
    """Creates objs with 8 concurrent clients; returns name -> create start time."""
    started, lock, it = {}, threading.Lock(), iter(objs)
    def worker():
        while True:
            with lock:
                o = next(it, None)
            if o is None:
                return
            t = time.monotonic()
            call("POST", path, o)
            started[o["metadata"]["name"]] = t
    ts = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return started

def wait_done(path, done, started, tick=lambda: None):
    """Polls the list until every object is done; returns name -> seconds create→done."""
    took = {}
    while len(took) < len(started):
        tick()
        now = time.monotonic()
        for o in call("GET", path)["items"]:
            name = o["metadata"]["name"]
            if name in started and name not in took and done(o):
                took[name] = now - started[name]
        time.sleep(0.1)
    return took

def report(label, took, t0):
    xs = sorted(took.values())
    wall = max(started_at + took[k] for k, started_at in starts[label].items()) - t0
    p = lambda q: xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]
    return {"rate": len(xs) / wall, "p50": p(50), "p99": p(99), "wall": wall}

starts = {}
t0 = time.monotonic()
starts["pods"] = create_all("/api/v1/namespaces/default/pods",
    [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"bare-{i}"}, "spec": POD_SPEC} for i in range(n)])
pods = wait_done("/api/v1/namespaces/default/pods", lambda o: o["status"].get("phase") == "Succeeded", starts["pods"])
r_pods = report("pods", pods, t0)

t0 = time.monotonic()
starts["jobs"] = create_all("/apis/batch/v1/namespaces/default/jobs",
    [{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"job-{i}"},
      "spec": {"template": {"spec": POD_SPEC}}} for i in range(n)])
def complete(o):
    return any(c["type"] == "Complete" and c["status"] == "True" for c in o.get("status", {}).get("conditions", []))
# Where a Job's time goes: created → its pod exists → the pod Succeeded → the Job Complete.
pod_seen, pod_done = {}, {}
def job_of(p):
    return p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name")
def pods_tick():
    now = time.monotonic()
    for p in call("GET", "/api/v1/namespaces/default/pods?labelSelector=batch.kubernetes.io/job-name")["items"]:
        j = job_of(p)
        pod_seen.setdefault(j, now)
        if p["status"].get("phase") == "Succeeded":
            pod_done.setdefault(j, now)
jobs = wait_done("/apis/batch/v1/namespaces/default/jobs", complete, starts["jobs"], pods_tick)
r_jobs = report("jobs", jobs, t0)
med = lambda xs: sorted(xs)[len(xs) // 2]
stage = [
    ("Job created → pod exists", med([pod_seen[j] - s for j, s in starts["jobs"].items() if j in pod_seen])),
    ("pod exists → Succeeded", med([pod_done[j] - pod_seen[j] for j in pod_done if j in pod_seen])),
    ("pod Succeeded → Complete", med([starts["jobs"][j] + jobs[j] - pod_done[j] for j in jobs if j in pod_done])),
]

print(f"{n} short runs created at once (busybox `true`, runc, through the scheduler)")
print(f"{'':<22}{'per second':>12}{'p50 (s)':>10}{'p99 (s)':>10}{'wall (s)':>10}")
for label, r in (("bare pods →Succeeded", r_pods), ("Jobs →Complete", r_jobs)):
    print(f"{label:<22}{r['rate']:>12.1f}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['wall']:>10.1f}")
for label, secs in stage:
    print(f"  median {label:<28}{secs:>6.2f} s")
print(f"Jobs cost: {r_pods['rate'] / r_jobs['rate']:.2f}x the time per run, "
      f"p50 {r_jobs['p50'] / r_pods['p50']:.2f}x, p99 {r_jobs['p99'] / r_pods['p99']:.2f}x (target < 1.3x)")
PY
