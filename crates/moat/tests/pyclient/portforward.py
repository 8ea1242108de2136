"""Port forwarding with the official Python client (`kubernetes.stream.portforward`, plain
WebSocket channels): an HTTP/1.0 request on each of two ports of a pod, both sent before
either answer is read (the client ends its port sockets only when the session ends).

    python portforward.py KUBECONFIG POD
Prints `PORT: BODY` per port.
"""

import sys

from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, sys.argv[2], "default", ports="8080,8081")
socks = {}
for port in (8080, 8081):
    s = pf.socket(port)
    s.setblocking(True)
    s.settimeout(30)
    s.sendall(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
    socks[port] = s
for port, s in socks.items():
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    body = data.split(b"\r\n\r\n", 1)[-1].decode().strip()
    print(f"{port}: {body}", flush=True)
    err = pf.error(port)
    if err:
        print(f"{port} error: {err}", flush=True)
pf.close()
