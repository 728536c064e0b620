#!/usr/bin/env python3
"""What one tracker per digest costs a node's calls (src/fleet/owner.rs): two berth replicas,
each with [cluster] and [fleet] (the fleet's parent), in front of a small upstream; a node's
tracker calls made by hand (fleet-signed, as a node makes them) to the digest's owner, which
answers them itself, and to the other replica, which forwards them to the owner under the
cluster's proof and relays the answer.

Design question: what does the forward add to a swarm call and to a piece-table call (a 256-piece
table of a committed blob), in latency, against the owner answering the same call itself, on one
machine? Calls alternate between the two replicas, so both see the same tracker state (it is the
owner's either way) and the same machine load.

Started here, each on its own loopback port, all stopped on exit:
  upstream   a Python HTTP server answering one blob (GET/HEAD by digest), 404 otherwise
  berth x2   target/release/berth serve, [cluster] of both, [fleet] with its own secret

Usage: python3 benches/load/fleet_owner.py [--calls N] [--berth BIN] [--out FILE]
  --calls  swarm calls and piece-table calls to each replica (default 400)
Loopback only; needs nothing but Python 3 and a release build.
"""
import argparse
import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Failed, berth_binary, git, metric, run, write_report  # noqa: E402

FLEET_SECRET = "fleet-secret-0123456789abcdef-0123456789"
CLUSTER_SECRET = "cluster-secret-0123456789abcdef-01234567"
REPO = "library/bench"
PIECE = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fleet_proof(method, path, body=None):
    """`Authorization: Berth-Fleet <ts> <hmac>` over `berth-fleet-v1 \\n METHOD \\n path \\n ts`;
    with a body, the path is followed by `\\n sha256:<hex of the body>`, which also goes in
    `Berth-Fleet-Body` (src/fleet/mod.rs). Returns the headers."""
    ts = int(time.time())
    target, headers = path, {}
    if body is not None:
        named = "sha256:" + hashlib.sha256(body).hexdigest()
        target, headers = f"{path}\n{named}", {"Berth-Fleet-Body": named}
    msg = f"berth-fleet-v1\n{method}\n{target}\n{ts}".encode()
    mac = hmac.new(FLEET_SECRET.encode(), msg, hashlib.sha256).hexdigest()
    headers["Authorization"] = f"Berth-Fleet {ts} {mac}"
    return headers


class Upstream(http.server.BaseHTTPRequestHandler):
    blob = b""
    digest = ""

    def answer(self, body):
        path = f"/v2/{REPO}/blobs/{self.digest}"
        if self.path.split("?")[0] != path:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.blob)))
        self.send_header("Docker-Content-Digest", self.digest)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(self.blob)

    def do_GET(self):  # noqa: N802
        self.answer(True)

    def do_HEAD(self):  # noqa: N802
        self.answer(False)

    def log_message(self, *args):
        pass


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="berth-fleet-owner-")
        self.procs = []
        self.results = {}

    def start_upstream(self):
        Upstream.blob = os.urandom(256 * PIECE)
        Upstream.digest = "sha256:" + hashlib.sha256(Upstream.blob).hexdigest()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.upstream = server
        return f"http://127.0.0.1:{server.server_address[1]}"

    def start_replicas(self, upstream):
        for name, value in (("fleet", FLEET_SECRET), ("cluster", CLUSTER_SECRET)):
            with open(os.path.join(self.dir, f"{name}-secret"), "w") as f:
                f.write(value)
        ports = [(free_port(), free_port()) for _ in range(2)]
        peers = ", ".join(f'"http://127.0.0.1:{p}"' for p, _ in ports)
        self.replicas = []
        for i, (port, mport) in enumerate(ports):
            d = os.path.join(self.dir, f"r{i}")
            os.makedirs(d)
            conf = os.path.join(d, "berth.toml")
            with open(conf, "w") as f:
                f.write(
                    f'[server]\nlisten = "127.0.0.1:{port}"\n[metrics]\nlisten = "127.0.0.1:{mport}"\n'
                    f'[storage]\npath = "{d}/data"\n'
                    f'[cluster]\nself = "http://127.0.0.1:{port}"\npeers = [{peers}]\n'
                    f'secret_file = "{self.dir}/cluster-secret"\nhealth_interval = "500ms"\n'
                    f'[fleet]\nsecret_file = "{self.dir}/fleet-secret"\n'
                    f'[[upstream]]\nname = "registry.test"\nurl = "{upstream}"\ndefault = true\n'
                )
            out = open(os.path.join(d, "log"), "w")
            self.procs.append(subprocess.Popen([self.binary, "serve", "--config", conf], stdout=out, stderr=out))
            self.replicas.append((port, mport))
        deadline = time.time() + 30
        while time.time() < deadline:
            if all(self.peers_up(m) for _, m in self.replicas):
                return
            time.sleep(0.2)
        raise Failed("the replicas never saw each other up")

    def metrics(self, mport):
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            return r.read().decode()

    def peers_up(self, mport):
        try:
            return metric(self.metrics(mport), 'berth_cluster_peers{state="up"}') == 2
        except OSError:
            return False

    def call(self, conn, method, path, body=None):
        headers = fleet_proof(method, path, body)
        if body is not None:
            headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        took = time.perf_counter() - start
        if resp.status != 200:
            raise Failed(f"{method} {path}: {resp.status} {data[:200]!r}")
        return took, data

    def run(self):
        self.binary = berth_binary(self.args.berth)
        self.start_replicas(self.start_upstream())
        digest = Upstream.digest
        # The blob through replica 0: both replicas hold it, the owner filled it from upstream.
        port0 = self.replicas[0][0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port0}/v2/{REPO}/blobs/{digest}", timeout=60) as r:
            if hashlib.sha256(r.read()).hexdigest() != digest.split(":")[1]:
                raise Failed("the blob came back wrong")
        conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p, _ in self.replicas]
        # The table, whole, once (made on the owner on the first ask).
        pieces = f"/_berth/fleet/v1/pieces/{digest}?from=0"
        for _ in range(100):
            _, data = self.call(conns[0], "GET", pieces)
            if json.loads(data)["complete"]:
                break
        else:
            raise Failed("the piece table never completed")
        swarm = {i: [] for i in range(2)}
        table = {i: [] for i in range(2)}
        path = f"/_berth/fleet/v1/swarm/{digest}?size={len(Upstream.blob)}"
        for k in range(self.args.calls):
            for i in range(2):
                node = f"http://10.{i}.{k // 250}.{k % 250 + 1}:5000"
                body = json.dumps({"node": node, "have": 0, "complete": False, "need_source": True})
                swarm[i].append(self.call(conns[i], "POST", path, body.encode())[0])
                table[i].append(self.call(conns[i], "GET", pieces)[0])
        selfs = [metric(self.metrics(m), 'berth_fleet_owner_calls_total{call="swarm",result="self"}') for _, m in self.replicas]
        owner = 0 if selfs[0] > 0 else 1
        tracked = [metric(self.metrics(m), "berth_fleet_tracker_requests_total") for _, m in self.replicas]
        if tracked[1 - owner] != 0 or tracked[owner] != 2 * self.args.calls:
            raise Failed(f"tracked on the replicas: {tracked}, owner {owner}")
        self.results = {"owner": owner, "swarm": swarm, "table": table}

    def report(self):
        owner = self.results["owner"]
        other = 1 - owner

        def q(xs, p):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

        rows = []
        for name in ("swarm", "table"):
            a, b = self.results[name][owner], self.results[name][other]
            rows.append(
                f"| {name} call | {q(a, .5):.2f} | {q(a, .99):.2f} | {q(b, .5):.2f} | {q(b, .99):.2f} "
                f"| {statistics.median(b) / statistics.median(a):.2f}x |"
            )
        text = (
            f"# One tracker per digest: the cost of the forward (benches/load/fleet_owner.py)\n\n"
            f"commit {git('rev-parse', '--short', 'HEAD')}, {os.cpu_count()} CPUs, {self.args.calls} calls of each "
            f"kind to each replica, alternating; latency in ms, one call at a time over a kept-alive connection.\n"
            f"The table call answers all 256 hashes of a committed 256 MiB blob (~17 KiB of JSON).\n\n"
            "| call | owner p50 | owner p99 | forwarded p50 | forwarded p99 | p50 ratio |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
        )
        write_report(self.args.out, text)

    def cleanup(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if getattr(self, "upstream", None):
            self.upstream.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--berth")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "berth-fleet-owner.md"))
    args = ap.parse_args()
    sys.exit(run(Bench(args)))


if __name__ == "__main__":
    main()
