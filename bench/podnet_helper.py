#!/usr/bin/env python3
"""Helpers for bench/podnet.sh (run inside a network namespace through nsenter).

  echo-server IP PORT          accept one TCP connection, echo every byte back, exit
  rr IP PORT N                 N round trips of 1 byte (after 200 warm-up ones); prints
                               "p50_us p99_us mean_us"
  converge NETNS[,NETNS...] TIMEOUT [--want RE]... -- CMD...
                               run CMD (e.g. kubectl create) while `ip -n NETNS monitor`
                               watches each namespace; prints "cmd_ms route_ms": ms from
                               just before CMD started to its exit, and to the moment every
                               --want pattern has matched a route/neigh event in every
                               namespace (-1 on timeout)
  converge-api KUBECONFIG NETNS[,NETNS...] NODE.yaml REPS [--want RE]...
                               REPS times: POST the Node straight to the API server (one
                               kept-alive HTTPS connection, so no kubectl start-up and TLS
                               handshake in the number), wait until every --want pattern
                               has matched a route/neigh event in every NETNS, DELETE it,
                               wait for the route's "Deleted" event; prints "post_ms up_ms
                               delete_ms down_ms" per rep, each from just before the
                               request was sent
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import live  # noqa: E402


def echo_server(ip, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, int(port)))
    srv.listen(1)
    print("ready", flush=True)
    srv.settimeout(60)
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = conn.recv(1)
        if not b:
            break
        conn.sendall(b)


def rr(ip, port, n):
    n = int(n)
    deadline = time.monotonic() + 10
    while True:
        try:
            c = socket.create_connection((ip, int(port)), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for i in range(200 + n):
        t0 = time.perf_counter_ns()
        c.sendall(b"x")
        if c.recv(1) != b"x":
            raise SystemExit("rr: echo mismatch")
        if i >= 200:
            samples.append(time.perf_counter_ns() - t0)
    c.close()
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[min(len(samples) - 1, (len(samples) * 99) // 100)] / 1000
    mean = sum(samples) / len(samples) / 1000
    print(f"{p50:.1f} {p99:.1f} {mean:.1f}")


def converge(args):
    # converge NETNS[,NETNS...] TIMEOUT [--want RE]... -- CMD...
    netnses, timeout = args[0].split(","), float(args[1])
    rest = args[2:]
    wants = []
    while rest and rest[0] == "--want":
        wants.append(re.compile(rest[1]))
        rest = rest[2:]
    if not rest or rest[0] != "--":
        raise SystemExit("converge: missing -- CMD")
    cmd = rest[1:]
    mons = [Monitor(n) for n in netnses]
    try:
        t0 = time.perf_counter()
        # The events may arrive before the command returns: the monitors stamp them.
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cmd_ms = (time.perf_counter() - t0) * 1000
        if r.returncode != 0:
            raise SystemExit(f"converge: {cmd}: {r.stderr.strip()}")
        got = [m.wait(wants, t0, timeout) for m in mons]
    finally:
        for m in mons:
            m.close()
    print(f"{cmd_ms:.0f} {-1 if min(got) < 0 else max(got):.0f}")


def Monitor(netns):
    """`ip -n NETNS monitor route neigh`, each line stamped when read."""
    return live.Monitor(["ip", "-n", netns, "monitor", "route", "neigh"])


def converge_api(args):
    kubeconfig, netns, manifest, reps = args[0], args[1], args[2], int(args[3])
    rest = args[4:]
    wants = [re.compile(rest[i + 1]) for i in range(0, len(rest), 2) if rest[i] == "--want"]
    api = live.Api(kubeconfig, "converge-api")
    with open(manifest) as f:
        node = yaml.safe_load(f)
    body = json.dumps(node)
    name = node["metadata"]["name"]
    gone = [re.compile("^Deleted.*" + re.escape(node["spec"]["podCIDR"]))]

    def call(method, path, data=None):
        api.call(method, path, data)

    # Warm the connection (TLS handshake) before anything is timed.
    call("GET", "/api/v1/nodes")
    mons = [Monitor(n) for n in netns.split(",")]

    def slowest(ws, t0):
        got = [m.wait(ws, t0, 10) for m in mons]
        return -1.0 if min(got) < 0 else max(got)

    try:
        for _ in range(reps):
            for m in mons:
                m.drain()
            t0 = time.perf_counter()
            call("POST", "/api/v1/nodes", body)
            post = (time.perf_counter() - t0) * 1000
            up = slowest(wants, t0)
            t0 = time.perf_counter()
            call("DELETE", f"/api/v1/nodes/{name}")
            delete = (time.perf_counter() - t0) * 1000
            down = slowest(gone, t0)
            print(f"{post:.1f} {up:.1f} {delete:.1f} {down:.1f}", flush=True)
            if up < 0 or down < 0:
                raise SystemExit("converge-api: timed out (10 s) waiting for the routes")
            time.sleep(0.1)
    finally:
        for m in mons:
            m.close()


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    op, args = sys.argv[1], sys.argv[2:]
    if op == "echo-server":
        echo_server(*args)
    elif op == "rr":
        rr(*args)
    elif op == "converge":
        converge(args)
    elif op == "converge-api":
        converge_api(args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
