#!/usr/bin/env python3
"""Helper of bench/netpol_live.sh: NetworkPolicy on the live path of a `moat cluster`.

  load KUBECONFIG PODS POLICIES     create PODS Pod objects in namespace `load` bound to the
                                    Node `ghost` (no agent; they tolerate everything), give
                                    each a podIP through the status subresource, and
                                    POLICIES NetworkPolicies over them; prints "pods/s"
  measure KUBECONFIG NETNS,... REPS  REPS times each, straight to the API server (one
                                    kept-alive HTTPS connection), the time from just before
                                    the request until every node's `nft monitor` shows a
                                    change of table inet moat_netpol: a policy selecting the
                                    bench pods (one per node) added, a peer pod's label
                                    changed, a peer pod added (its podIP set), the policy
                                    deleted. Prints "what slowest_ms fastest_ms" per sample.
  endpoints KUBECONFIG NETNS,... REPS Service endpoint changes (scale 3 -> 1, 1 -> 0): ms
                                    until the EndpointSlice shows it and until every node's
                                    moat-proxy table has it. Prints "what api_ms nodes_ms".
"""

import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import live  # noqa: E402


def Api(kubeconfig):
    return live.Api(kubeconfig, "netpol_live")


def ghost_pod(i):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"g{i}",
            "namespace": "load",
            "labels": {"app": f"a{i % 100}", "role": f"r{i % 50}"},
        },
        "spec": {
            "nodeName": "ghost",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "localhost/busybox:latest"}],
        },
    }


def ghost_ip(i):
    # 10.42.128.0/17 holds no real node's podCIDR in a 3-node cluster.
    return f"10.42.{128 + i // 250}.{2 + i % 250}"


def set_ip(api, name, ip):
    api.call(
        "PATCH",
        f"/api/v1/namespaces/load/pods/{name}/status",
        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
        "application/merge-patch+json",
    )


def load(args):
    api, pods, policies = Api(args[0]), int(args[1]), int(args[2])
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "load"}}, allow_conflict=True)
    api.call(
        "POST",
        "/api/v1/nodes",
        {"metadata": {"name": "ghost"}},
        allow_conflict=True,
    )
    t0 = time.perf_counter()
    workers = 4

    def create(k):
        mine = Api(args[0])
        for i in range(k, pods, workers):
            mine.call("POST", "/api/v1/namespaces/load/pods", ghost_pod(i), allow_conflict=True)
            set_ip(mine, f"g{i}", ghost_ip(i))

    threads = [threading.Thread(target=create, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = pods / (time.perf_counter() - t0) if pods else 0
    for j in range(policies):
        api.call(
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/load/networkpolicies",
            {
                "metadata": {"name": f"p{j}"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": f"a{j % 100}"}},
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": {"role": f"r{j % 50}"}}}],
                            "ports": [{"port": 80 + j % 20}],
                        }
                    ],
                },
            },
        )
    print(f"{rate:.0f}")


class Monitor(live.Monitor):
    """`nft monitor` in a node's namespace."""

    def __init__(self, netns):
        super().__init__(["ip", "netns", "exec", netns, "nft", "monitor"])

    def first_after(self, t0, timeout, table="moat_netpol", any_commit=False):
        """ms from t0 to the first line after t0 naming `table` (or, with `any_commit`, to
        the first committed transaction: nft 1.0.6's monitor prints only `# new generation`
        for element changes of concatenated interval sets); -1 on timeout."""
        while True:
            left = t0 + timeout - time.perf_counter()
            if left <= 0:
                return -1.0
            try:
                at, text = self.lines.get(timeout=left)
            except queue.Empty:
                return -1.0
            if at >= t0 and (table in text or (any_commit and text.startswith("# new generation"))):
                return (at - t0) * 1000


def measure(args):
    api, netns, reps = Api(args[0]), args[1].split(","), int(args[2])
    api.call("GET", "/api/v1/namespaces/load/pods?limit=1")
    mons = [Monitor(n) for n in netns]
    policy = {
        "metadata": {"name": "bench"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "bench"}},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "peer"}}}]}],
        },
    }

    def fresh():
        # A new `nft monitor` per change: nft 1.0.6's monitor stops reporting changes to a
        # concatenated interval set created after it started (seen here: the peer removed
        # from the kernel, nothing printed).
        nonlocal mons
        for m in mons:
            m.close()
        mons = [Monitor(n) for n in netns]

    def timed(what, method, path, obj=None, ctype="application/json"):
        time.sleep(0.3)  # the previous change has settled everywhere
        fresh()
        t0 = time.perf_counter()
        api.call(method, path, obj, ctype)
        got = [m.first_after(t0, 30, any_commit=True) for m in mons]
        if min(got) < 0:
            raise SystemExit(f"netpol_live: {what}: a node never changed its ruleset")
        print(f"{what} {max(got):.1f} {min(got):.1f}", flush=True)

    try:
        api.call("POST", "/api/v1/namespaces/load/pods", ghost_pod(10**6) | {
            "metadata": {"name": "peer-0", "namespace": "load", "labels": {"role": "peer"}}},
            allow_conflict=True)
        set_ip(api, "peer-0", "10.42.255.2")
        for r in range(reps):
            timed("policy-add", "POST",
                  "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies", policy)
            role = "other" if r % 2 == 0 else "peer"
            timed("label-change", "PATCH", "/api/v1/namespaces/load/pods/peer-0",
                  {"metadata": {"labels": {"role": role}}}, "application/merge-patch+json")
            name = f"peer-{r + 1}"
            api.call("POST", "/api/v1/namespaces/load/pods", ghost_pod(10**6) | {
                "metadata": {"name": name, "namespace": "load", "labels": {"role": "peer"}}},
                allow_conflict=True)
            time.sleep(0.3)
            fresh()
            t0 = time.perf_counter()
            set_ip(api, name, f"10.42.255.{3 + r}")
            got = [m.first_after(t0, 30, any_commit=True) for m in mons]
            if min(got) < 0:
                raise SystemExit("netpol_live: pod-add: a node never changed its ruleset")
            print(f"pod-add {max(got):.1f} {min(got):.1f}", flush=True)
            timed("policy-delete", "DELETE",
                  "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/bench")
    finally:
        for m in mons:
            m.close()


def endpoints(args):
    """endpoints KUBECONFIG NETNS,... REPS: Deployment `web` (3 ready replicas) behind Service
    `web`: scale 3 -> 1 and 1 -> 0, each REPS times; per change the ms until the EndpointSlice
    changed (the API's view) and until every node's `moat-proxy` table changed."""
    api, netns, reps = Api(args[0]), args[1].split(","), int(args[2])
    mons = [Monitor(n) for n in netns]
    scale = "/apis/apps/v1/namespaces/default/deployments/web/scale"
    slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb"

    def ready_endpoints():
        out = json.loads(api.call("GET", slices))
        return sum(
            1
            for s in out.get("items", [])
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready")
        )

    def until(pred, t0, timeout=120):
        while not pred():
            if time.perf_counter() - t0 > timeout:
                raise SystemExit("netpol_live: endpoints: timed out")
            time.sleep(0.01)
        return (time.perf_counter() - t0) * 1000

    def change(what, replicas, want_ready):
        nonlocal mons
        time.sleep(0.5)
        # A new monitor per change, as in measure (nft 1.0.6's monitor can go quiet).
        for m in mons:
            m.close()
        mons = [Monitor(n) for n in netns]
        t0 = time.perf_counter()
        api.call("PATCH", scale, {"spec": {"replicas": replicas}}, "application/merge-patch+json")
        api_ms = until(lambda: ready_endpoints() == want_ready, t0)
        # The first change stops new connections to the pods that left (the EndpointSlice
        # marks them not ready, or removes them, in one write).
        got = [m.first_after(t0, 30, "moat-proxy") for m in mons]
        if min(got) < 0:
            raise SystemExit(f"netpol_live: {what}: a node never changed its proxy table")
        print(f"{what} {api_ms:.1f} {max(got):.1f}", flush=True)

    try:
        for _ in range(reps):
            api.call("PATCH", scale, {"spec": {"replicas": 3}}, "application/merge-patch+json")
            until(lambda: ready_endpoints() == 3, time.perf_counter())
            change("scale-3-to-1", 1, 1)
            change("scale-1-to-0", 0, 0)
    finally:
        for m in mons:
            m.close()


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    op, args = sys.argv[1], sys.argv[2:]
    if op == "load":
        load(args)
    elif op == "measure":
        measure(args)
    elif op == "endpoints":
        endpoints(args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
