"""Shared by the live-cluster benchmark helpers (podnet_helper.py, netpol_live.py): an HTTPS
client of a `moat cluster`'s API (kept alive, so no TLS handshake in a timed request) and a
monitor that stamps each line of an event stream (`ip monitor`, `nft monitor`) when read."""

import base64
import http.client
import json
import os
import queue
import ssl
import subprocess
import threading
import time

import yaml


class Api:
    """The API server of a kubeconfig (token auth), on one kept-alive connection."""

    def __init__(self, kubeconfig, who="bench"):
        with open(kubeconfig) as f:
            kc = yaml.safe_load(f)
        cluster = kc["clusters"][0]["cluster"]
        self.who = who
        self.token = kc["users"][0]["user"]["token"]
        url = cluster["server"].removeprefix("https://")
        host, port = url.split("/")[0].rsplit(":", 1)
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        ctx = ssl.create_default_context(cadata=ca)
        self.conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)

    def call(self, method, path, obj=None, ctype="application/json", allow_conflict=False):
        hdr = {"Authorization": f"Bearer {self.token}", "Content-Type": ctype}
        body = None if obj is None else (obj if isinstance(obj, str) else json.dumps(obj))
        self.conn.request(method, path, body=body, headers=hdr)
        r = self.conn.getresponse()
        out = r.read()
        if r.status >= 300 and not (allow_conflict and r.status == 409):
            raise SystemExit(f"{self.who}: {method} {path}: {r.status} {out[:300]!r}")
        return out


class Monitor:
    """Runs `cmd` (an event stream) and stamps each output line with perf_counter when read."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # The monitor subscribes before it prints anything; give it a moment to bind.
        time.sleep(0.3)

    def _read(self):
        fd = self.proc.stdout.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            now = time.perf_counter()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.lines.put((now, line.decode(errors="replace")))

    def drain(self):
        while not self.lines.empty():
            self.lines.get_nowait()

    def wait(self, wants, t0, timeout):
        """ms from t0 until every pattern has matched a line read after t0; -1 on timeout."""
        seen = [False] * len(wants)
        at = t0
        while not all(seen):
            left = t0 + timeout - time.perf_counter()
            if left <= 0:
                return -1.0
            try:
                at, text = self.lines.get(timeout=left)
            except queue.Empty:
                return -1.0
            if at < t0:
                continue
            for i, w in enumerate(wants):
                if w.search(text):
                    seen[i] = True
        return (at - t0) * 1000

    def close(self):
        self.proc.kill()
        self.proc.wait()
