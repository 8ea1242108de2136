"""Drives moat with the official Kubernetes Python client (PyPI `kubernetes`), a client no one
here wrote, and checks that every call behaves as upstream. Run by tests/python_client.rs:

    python official_client.py KUBECONFIG

Prints one line per step; exits non-zero (with the failing step and why) on the first
difference.
"""

import base64
import json
import sys
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "pyclient"
step_name = "setup"


def step(name):
    global step_name
    step_name = name
    print(f"step: {name}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def api_error(fn, code):
    """Runs fn, which must fail with HTTP `code`; returns the Status body."""
    try:
        fn()
    except ApiException as e:
        check(e.status == code, f"expected HTTP {code}, got {e.status}: {e.body}")
        body = json.loads(e.body)
        check(body.get("kind") == "Status", f"error body is not a Status: {e.body}")
        return body
    raise AssertionError(f"expected HTTP {code}, the call succeeded")


def eventually(what, f, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if f():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def b64(s):
    return base64.b64encode(s.encode()).decode()


def meta(name, **kw):
    return client.V1ObjectMeta(name=name, **kw)


def apps_resources():
    return client.AppsV1Api().get_api_resources().resources


def main(kubeconfig):
    config.load_kube_config(kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    net = client.NetworkingV1Api()
    node = client.NodeV1Api()

    step("VersionApi().get_code()")
    v = client.VersionApi().get_code()
    check(v.major == "1" and v.git_version.startswith("v1."), f"version: {v}")

    step("discovery: versions, groups, resources")
    check(client.CoreApi().get_api_versions().versions == ["v1"], "core versions")
    groups = {g.name for g in client.ApisApi().get_api_versions().groups}
    check({"apps", "networking.k8s.io", "node.k8s.io"} <= groups, f"groups {groups}")
    check(client.AppsApi().get_api_group().preferred_version.group_version == "apps/v1", "apps group")
    res = {r.name for r in apps_resources()}
    check({"deployments", "deployments/scale", "replicasets"} <= res, f"apps resources {res}")

    step("namespaces: create, read, list by label")
    core.create_namespace(client.V1Namespace(metadata=meta(NS, labels={"suite": "py"})))
    ns = core.read_namespace(NS)
    check(ns.status.phase == "Active", f"phase {ns.status.phase}")
    check(ns.metadata.labels.get("kubernetes.io/metadata.name") == NS, f"{ns.metadata.labels}")
    names = [n.metadata.name for n in core.list_namespace(label_selector="suite=py").items]
    check(names == [NS], f"namespaces by label: {names}")

    step("422 for an invalid name")
    body = api_error(
        lambda: core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta("Not_A_Name"))),
        422,
    )
    check(body["reason"] == "Invalid", f"{body}")
    causes = body.get("details", {}).get("causes", [])
    check(any(c.get("field") == "metadata.name" for c in causes), f"causes: {causes}")
    api_error(lambda: core.read_namespaced_config_map("Not_A_Name", NS), 404)

    step("deployments: create and read")
    dep = client.V1Deployment(
        metadata=meta("web", labels={"app": "web"}),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=meta(None, labels={"app": "web"}),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="c",
                            image="busybox:1",
                            env=[client.V1EnvVar(name="A", value="1")],
                            ports=[client.V1ContainerPort(container_port=8080)],
                        )
                    ]
                ),
            ),
        ),
    )
    created = apps.create_namespaced_deployment(NS, dep)
    check(created.metadata.uid and created.metadata.generation == 1, f"{created.metadata}")
    first = apps.read_namespaced_deployment("web", NS)
    check(first.spec.strategy.type == "RollingUpdate", f"defaults: {first.spec.strategy}")
    api_error(lambda: apps.create_namespaced_deployment(NS, dep), 409)

    step("deployments: strategic-merge patch merges env by name")
    patched = apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "c", "env": [{"name": "B", "value": "2"}]}]}}}},
    )
    c = patched.spec.template.spec.containers
    check(len(c) == 1 and c[0].image == "busybox:1", f"containers: {c}")
    check(sorted((e.name, e.value) for e in c[0].env) == [("A", "1"), ("B", "2")], f"env: {c[0].env}")
    check(patched.metadata.generation == 2, f"generation {patched.metadata.generation}")

    step("deployments: scale subresource")
    scale = apps.read_namespaced_deployment_scale("web", NS)
    check(scale.spec.replicas == 1 and scale.kind == "Scale", f"{scale}")
    scale = apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 3}})
    check(scale.spec.replicas == 3, f"{scale}")
    check(apps.read_namespaced_deployment("web", NS).spec.replicas == 3, "replicas after scale")
    # A replace carries the resourceVersion it read; the deployment controller writes the
    # status meanwhile, so read-modify-replace retries on 409 as client-go's RetryOnConflict.
    for attempt in range(5):
        scale = apps.read_namespaced_deployment_scale("web", NS)
        scale.spec.replicas = 2
        try:
            scale = apps.replace_namespaced_deployment_scale("web", NS, scale)
            break
        except ApiException as e:
            if e.status != 409 or attempt == 4:
                raise
    check(scale.spec.replicas == 2, f"{scale}")

    step("deployments: stale resourceVersion is a 409 Conflict")
    first.spec.replicas = 5
    body = api_error(lambda: apps.replace_namespaced_deployment("web", NS, first), 409)
    check(body["reason"] == "Conflict", f"{body}")
    check(apps.read_namespaced_deployment("web", NS).spec.replicas == 2, "nothing changed")
    current = apps.read_namespaced_deployment("web", NS)
    current.spec.replicas = 1
    check(apps.replace_namespaced_deployment("web", NS, current).spec.replicas == 1, "fresh replace")

    step("services")
    svc = core.create_namespaced_service(
        NS,
        client.V1Service(
            metadata=meta("web"),
            spec=client.V1ServiceSpec(
                selector={"app": "web"},
                ports=[client.V1ServicePort(port=80, target_port=8080)],
            ),
        ),
    )
    check(svc.spec.cluster_ip and svc.spec.type == "ClusterIP", f"{svc.spec}")
    check(svc.spec.ports[0].protocol == "TCP", f"{svc.spec.ports}")
    names = [s.metadata.name for s in core.list_namespaced_service(NS).items]
    check(names == ["web"], f"services: {names}")

    step("NetworkPolicies")
    net.create_namespaced_network_policy(
        NS,
        client.V1NetworkPolicy(
            metadata=meta("allow-clients"),
            spec=client.V1NetworkPolicySpec(
                pod_selector=client.V1LabelSelector(match_labels={"app": "web"}),
                ingress=[
                    client.V1NetworkPolicyIngressRule(
                        _from=[
                            client.V1NetworkPolicyPeer(
                                pod_selector=client.V1LabelSelector(match_labels={"role": "client"})
                            )
                        ],
                        ports=[client.V1NetworkPolicyPort(port=8080, protocol="TCP")],
                    )
                ],
            ),
        ),
    )
    np = net.read_namespaced_network_policy("allow-clients", NS)
    check(np.spec.policy_types == ["Ingress"], f"policyTypes {np.spec.policy_types}")
    check(np.spec.ingress[0].ports[0].port == 8080, f"{np.spec.ingress}")
    body = api_error(
        lambda: net.create_namespaced_network_policy(
            NS,
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "bad"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
            },
        ),
        422,
    )
    check(body["reason"] == "Invalid", f"{body}")

    step("RuntimeClasses")
    node.create_runtime_class(client.V1RuntimeClass(metadata=meta("py-kata"), handler="kata"))
    check(node.read_runtime_class("py-kata").handler == "kata", "handler")
    check("py-kata" in [r.metadata.name for r in node.list_runtime_class().items], "listed")
    api_error(lambda: node.create_runtime_class(client.V1RuntimeClass(metadata=meta("bad"), handler="Not OK")), 422)
    node.delete_runtime_class("py-kata")
    api_error(lambda: node.read_runtime_class("py-kata"), 404)

    step("ConfigMaps")
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta("cm1", labels={"k": "a"}), data={"x": "1"}))
    check(core.read_namespaced_config_map("cm1", NS).data == {"x": "1"}, "data")
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta("short-lived")))
    r = core.delete_namespaced_config_map("short-lived", NS)
    status = r["status"] if isinstance(r, dict) else r.status
    details = r["details"] if isinstance(r, dict) else r.details.to_dict()
    check(status == "Success" and details["name"] == "short-lived", f"delete answered {r}")
    check(details["kind"] == "configmaps", f"details {details}")

    step("Secrets with stringData")
    core.create_namespaced_secret(
        NS,
        client.V1Secret(metadata=meta("s1"), string_data={"user": "admin"}, data={"other": b64("x")}),
    )
    s = core.read_namespaced_secret("s1", NS)
    check(s.data == {"user": b64("admin"), "other": b64("x")}, f"data {s.data}")
    check(s.string_data is None and s.type == "Opaque", f"stringData {s.string_data}, type {s.type}")
    s = core.patch_namespaced_secret("s1", NS, {"stringData": {"user": "root"}})
    check(s.data["user"] == b64("root") and s.string_data is None, f"after patch {s.data}")

    step("watch from a resourceVersion")
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta("cm2"), data={"v": "1"}))
    core.patch_namespaced_config_map("cm2", NS, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("cm2", NS)
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta("cm3", labels={"k": "b"})))
    seen = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=5):
        name = ev["object"].metadata.name
        if name.startswith("cm"):
            seen.append((ev["type"], name))
        if len(seen) == 4:
            w.stop()
    check(
        seen == [("ADDED", "cm2"), ("MODIFIED", "cm2"), ("DELETED", "cm2"), ("ADDED", "cm3")],
        f"events: {seen}",
    )

    step("label and field selectors")
    by = lambda **kw: sorted(c.metadata.name for c in core.list_namespaced_config_map(NS, **kw).items)
    check(by(label_selector="k=a") == ["cm1"], f"k=a: {by(label_selector='k=a')}")
    check(by(label_selector="k in (a,b)") == ["cm1", "cm3"], "k in (a,b)")
    check(by(label_selector="k,k!=a") == ["cm3"], "k,k!=a")
    check(by(field_selector="metadata.name=cm3") == ["cm3"], "metadata.name=cm3")
    check("cm1" not in by(field_selector="metadata.name!=cm1"), "metadata.name!=cm1")
    pods = core.list_namespaced_pod(NS, field_selector="status.phase=Running,spec.nodeName=nowhere")
    check(pods.items == [], "no pods on node nowhere")
    body = api_error(lambda: core.list_namespaced_config_map(NS, field_selector="data.x=1"), 400)
    check(body["reason"] == "BadRequest", f"{body}")

    step("limit and continue")
    for i in range(7):
        core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta(f"page-{i}", labels={"page": "y"})))
    got, token, pages = [], None, 0
    while True:
        page = core.list_namespaced_config_map(NS, label_selector="page=y", limit=3, _continue=token)
        pages += 1
        check(len(page.items) <= 3, f"page of {len(page.items)}")
        got += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    check(pages == 3 and sorted(got) == [f"page-{i}" for i in range(7)], f"{pages} pages: {got}")

    step("pods and events the controllers made decode")
    # One ReplicaSet per template the controller saw (the patch above may have made two).
    eventually("the Deployment's ReplicaSets", lambda: len(apps.list_namespaced_replica_set(NS).items) >= 1)
    eventually("the Deployment's pod", lambda: len(core.list_namespaced_pod(NS).items) >= 1)
    # No node in this cluster: the scheduler says so on the pods and in events.
    eventually(
        "PodScheduled=False",
        lambda: any(
            c.type == "PodScheduled" and c.status == "False"
            for p in core.list_namespaced_pod(NS).items
            for c in (p.status.conditions or [])
        ),
    )
    eventually(
        "a FailedScheduling event",
        lambda: any(e.reason == "FailedScheduling" for e in core.list_namespaced_event(NS).items),
    )
    rs = apps.list_namespaced_replica_set(NS).items[0]
    check(rs.metadata.owner_references[0].kind == "Deployment", f"{rs.metadata.owner_references}")

    step("foreground delete")
    apps.delete_namespaced_deployment("web", NS, body=client.V1DeleteOptions(propagation_policy="Foreground"))
    try:
        d = apps.read_namespaced_deployment("web", NS)
        check(d.metadata.deletion_timestamp is not None, "deletionTimestamp while dependents go")
        check("foregroundDeletion" in (d.metadata.finalizers or []), f"finalizers {d.metadata.finalizers}")
    except ApiException as e:
        check(e.status == 404, f"{e}")

    def gone():
        try:
            apps.read_namespaced_deployment("web", NS)
            return False
        except ApiException as e:
            return e.status == 404

    eventually("the Deployment gone", gone)
    check(apps.list_namespaced_replica_set(NS).items == [], "the ReplicaSets went first")
    check(core.list_namespaced_pod(NS).items == [], "and their pods")

    step("namespace delete")
    core.delete_namespace(NS)

    def ns_gone():
        try:
            core.read_namespace(NS)
            return False
        except ApiException as e:
            return e.status == 404

    eventually("the namespace gone", ns_gone)
    print("all steps passed", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as e:  # report which step, then fail
        print(f"FAILED at step {step_name!r}: {type(e).__name__}: {e}", flush=True)
        raise
