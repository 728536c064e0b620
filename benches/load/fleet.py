#!/usr/bin/env python3
"""Fleet rollout test bed and benchmark (issue 21): N node berths, each in its own network
namespace behind a capped link, pull one fresh blob at once through a central berth in front of
the Distribution registry.

Design question: how long does a simultaneous cold rollout take when every node's link is
capped, against one node's pull alone at the same cap, and what does it cost the central berth
and the upstream? Targets once the swarm (src/swarm/) serves nodes from each other: upstream
bytes 1 blob, bytes out of the central berth at most 2 blobs whatever N, p99 <= 1.5x the single
pull. The baseline (node mode before the swarm: every node pulled straight from the central
berth, Spegel's cold case) and the swarm's figures, from this harness, are in BENCHMARKS.md
("Fleet rollout").

The bed (all made here, all removed on exit, Ctrl-C and SIGTERM included):
  <prefix>-sw   a namespace holding one bridge (br0) and the switch side of every link
  <prefix>-up   the upstream: docker-registry (filesystem storage), its access log counting GETs
  <prefix>-c    the central berth ([fleet] secret_file, one [[upstream]]: the registry)
  <prefix>-cK   with --replicas R >= 2, replicas K = 1..R-1 beside -c (replica 0): each also has
                [cluster] (self, peers = all R, a cluster secret of its own) and a second capped
                link, eth1, to a bridge of the replicas' own (br1, 10.214.<pid % 256>.0/24) that
                carries only their peer traffic (a miss handed to the digest's owner, tracker and
                piece-table calls forwarded to it), so eth0 counts what the central berth sends to
                nodes; node K's parent is replica K % R (a Service spreading the nodes)
  <prefix>-s3   with --bucket (and --replicas >= 2): Ceph's S3 gateway (tests/ceph/start-ceph.sh:
                mon, memstore OSD, radosgw, run inside the namespace, radosgw on its address),
                one bucket that every replica shares ([storage.s3]); its one link (capped at
                --bucket-rate, default --rate) is to the replicas' bridge (br1), so uploads and
                bucket reads never cross eth0
  <prefix>-nK   node K: a berth with [fleet] parent, self, peers (every node), secret_file; the
                node's client (a runtime's stand-in) runs in the same namespace and GETs the blob
                from its node berth on that namespace's own address (so it crosses no link)
  <prefix>-lJ   lying node J (only when `liar` runs; --liars of them, at .4, .5, ...):
                benches/load/liar.py, holding the fleet secret; in the `liar` scenario its URL
                is in every node's peers, so the nodes take it as a node of the fleet
Each namespace has one veth pair to the bridge, with a tbf token bucket on both ends (--rate, or
--slow-rate on the slow node of the `slow` scenario): the namespace's end caps its upload, the
switch's end its download. The prefix is berthfb-<pid>; addresses are 10.213.<pid % 256>.0/24,
but since every address lives in the bed's own namespaces, nothing outside them sees or routes
them (the root namespace gets no interface at all). What a run killed with -9 leaves (its
namespaces, the processes still in them, its temp dir berth-fleetbed.<pid>.*) is removed by the
next run; a temp dir kept by --keep stays until removed by hand.

Scenarios (--scenarios, comma-separated; each on a fresh blob, so every cache is cold, and with
node berths restarted empty):
  single  one node pulls alone: the reference, "one node's pull at the cap"
  all     N nodes pull at once
  kill    N nodes at once; when the first node has half the blob, its berth is SIGKILLed (with the
          swarm, the node furthest ahead is the likeliest source of others): its own client fails
          (expected), the others' figures say what the loss cost them
  slow    N nodes at once, node 0's link (both directions) at --slow-rate (default rate/10);
          with --slow-first node 0 is released first and the others once the tracker answered
          its join (node 0 heads the chain), each pull timed from its own release
  bucket  (needs --bucket) N nodes at once, the blob only in the bucket: it is pulled once through
          replica 0 (which fills it from the upstream and uploads it), and once the object is in
          the bucket every replica is restarted with an empty disk; so the replica a node's
          miss reaches fills from the bucket without asking the digest's owner, and the owner
          makes the piece table from the bucket's object. Upstream GETs count from the restart (0)
  liar    N nodes at once, and --liars lying nodes released just before them: each joins the
          swarm on the parent's tracker with the fleet proof, as a node does (the nodes are
          released once every liar's join and claim were answered 200), claims to hold the blob
          (--liar-claim complete; or `progress`, a receiver ahead of everyone), announcing
          --liar-uploads slots (default 4, a node's default), so the tracker hands it out before
          the parent; it serves the blob with one byte flipped in piece --liar-piece (default 0;
          or --liar-bytes garbage). The nodes must complete no wrong body: each finds the lie
          at the first bad piece (the parent's piece table), drops the liar (`bad_piece`, which
          the tracker never hands out again for that digest) and goes on elsewhere. With every
          node on liars at once (--liar-uploads >= N), nobody asks the parent, whose piece
          table exists only while it holds or fills the blob: the nodes wait for the table
          until drive::MAX_HASH_MISSES (about 3 s), then take the blob from the parent.
Each client hashes what it receives (sha256) and reports its status, size, digest and the time
from the common start (a barrier on stdin, released at once) to its last byte: "verified" is a
200 whose bytes hash to the digest; "wrong" a complete body that does not (never acceptable).

Figures per scenario (with --replicas, the central berth's are summed over the replicas, and
three more: the digest's owner replica, the bytes the replicas sent each other (eth1's tx, less
what the bucket received), and the nodes' tracker calls forwarded to the owner,
berth_fleet_owner_calls_total{result="owner"}; with --bucket, the bytes read out of the bucket
and uploaded into it (its link's tx and rx) and each replica's bucket GETs): verified / failed /
wrong bodies; p50, p99 (nearest rank) and max time to a
verified blob, and their ratio to `single`; upstream fetches (the registry's access log: GET lines
of the blob's path) and upstream bytes out (the upstream's veth tx counter) in blobs; bytes out of
the central berth (its veth tx counter, and berth_served_bytes_total) in blobs; bytes the nodes
got from the parent (berth_fleet_bytes_total{source="parent"} plus berth_upstream_fetched_bytes_total
on the nodes) and from other nodes (berth_fleet_bytes_total{source="peer"}, which counts a liar's
bytes too, as they arrive, before their piece fails) in blobs; pieces rejected
(berth_fleet_pieces_rejected_total) and sources dropped by reason
(berth_fleet_peers_dropped_total{reason}), summed over the nodes; and in `liar`, the bytes the
liars sent and the blob requests they answered (their own counters, GET /_liar/stats). With --keep,
each client's progress file (<scenario>-nK.progress: "<unix time> <bytes>" every 1/64 of the blob)
is its timeline, and each berth's log is in <dir>/<name>/log.

Usage: python3 benches/load/fleet.py [--quick] [--nodes N] [--blob-mib M] [--rate R] [--out FILE]
                                     [--json FILE] [--scenarios single,all,kill,slow,liar]
                                     [--berth BIN] [--keep] [--liars J] [--liar-uploads U]
                                     [--liar-claim complete|progress] [--liar-bytes flip|garbage]
                                     [--replicas R] [--bucket]
                                     [--slow-first]
  full     16 nodes, 256 MiB, 200mbit, all five scenarios
  --quick  8 nodes, 32 MiB: a smoke test of the bed (~1 min)
Needs root (ip netns, tc), iproute2, curl and docker-registry (apt-get installed if missing);
with --bucket also radosgw, ceph-mon, ceph-osd, uuid-runtime (apt-get installed if missing) and
boto3 (pip: not installed by the bed).
tests/it/fleet_bed.rs runs this with 3 nodes and a 4 MiB blob in CI (single, all, kill, and liar
with one liar announcing one slot), then with 4 nodes behind 2 replicas (all).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, Failed, apt_install, berth_binary, git, log, metric, registry_config, run, write_report  # noqa: E402

REPO = "bench"
PORT = 5000
MPORT = 9090
APT = ["docker-registry", "curl", "iproute2"]
# With --bucket: Ceph's S3 gateway.
APT_BUCKET = ["radosgw", "ceph-mon", "ceph-osd", "uuid-runtime"]
CEPH = os.path.join(ROOT, "tests/ceph/start-ceph.sh")
BUCKET, RGW_PORT = "berth", 7480
# The bucket's one client (boto3, in the gateway's namespace): `make` the bucket, or `has` a key
# (exit 0: there; 1: not there).
S3_CLIENT = r"""
import sys, boto3, botocore
from botocore.config import Config
endpoint, op, bucket = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testkey", aws_secret_access_key="testsecret",
                  region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
if op == "make":
    s3.create_bucket(Bucket=bucket)
else:
    try:
        s3.head_object(Bucket=bucket, Key=sys.argv[4])
    except botocore.exceptions.ClientError:
        sys.exit(1)
"""
LIAR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "liar.py")
# The reasons of berth_fleet_peers_dropped_total (src/swarm/tracker.rs, Reason).
REASONS = ("bad_piece", "stall", "closed", "unreachable", "busy", "starved")
SCENARIOS = ("single", "all", "kill", "slow", "liar", "bucket")
NS_RE = re.compile(r"^berthfb-(\d+)-")
# In a temp dir kept by --keep: the next run's sweep leaves it (remove it by hand).
KEPT = "KEPT"

# The node's client: waits for the go line, GETs the blob, hashes it as it arrives, appends its
# progress (a line "<unix time> <bytes so far>") to a file every `step` bytes, prints one JSON
# line. The progress files (kept with --keep) are each node's timeline.
CLIENT = r"""
import hashlib, json, sys, time, urllib.request
url, progress, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
h, n, status, err = hashlib.sha256(), 0, 0, ""
try:
    with urllib.request.urlopen(url, timeout=600) as r:
        status = r.status
        while True:
            b = r.read(1 << 16)
            if not b:
                break
            h.update(b)
            n += len(b)
            if n % step < len(b):
                with open(progress, "a") as f:
                    f.write(f"{time.time():.3f} {n}\n")
except Exception as e:
    err = repr(e)
print(json.dumps({"status": status, "bytes": n, "sha256": h.hexdigest(), "end": time.time(), "err": err}), flush=True)
"""


def sh(*argv, check=True, capture=False):
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise Failed(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout if capture else None


def ensure_deps(bucket=False):
    if os.geteuid() != 0:
        raise Failed("the bed needs root (ip netns, tc)")
    apt_install(APT + (APT_BUCKET if bucket else []))


def del_ns(name):
    """Kills what still runs in the namespace `name` (by pid: only the bed's own processes live
    there), then deletes it."""
    for pid in sh("ip", "netns", "pids", name, check=False, capture=True).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    sh("ip", "netns", "del", name, check=False)


def sweep_stale():
    """Removes namespaces left by a bed whose process is gone (its pid is in their names)."""
    for line in sh("ip", "netns", "list", capture=True).splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            log(f"removing {name}, left by a run that is gone")
            del_ns(name)
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        m = re.match(r"^berth-fleetbed\.(\d+)\.", entry)
        kept = os.path.exists(os.path.join(tmp, entry, KEPT))
        if m and not kept and not os.path.exists(f"/proc/{m.group(1)}"):
            log(f"removing {os.path.join(tmp, entry)}, left by a run that is gone")
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)


class Proc:
    """One process in a namespace: its Popen (ip netns exec execs it, so the pid is its own)."""

    def __init__(self, name, ns, argv, log_path, **kw):
        self.name, self.ns, self.log_path = name, ns, log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stderr=self.log, **({"stdout": self.log} | kw)
        )

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Bed:
    def __init__(self, args):
        self.args = args
        self.n = args.nodes
        self.size = args.blob_mib << 20
        self.prefix = f"berthfb-{os.getpid()}"
        self.net = f"10.213.{os.getpid() % 256}"
        self.work = tempfile.mkdtemp(prefix=f"berth-fleetbed.{os.getpid()}.")
        self.namespaces = []
        self.procs = []
        self.clients = []  # the running scenario's client processes
        self.nodes = []  # per node: dict(ns, ip, dir, proc)
        # Lying nodes (scenario `liar`): namespaces made only when the scenario runs.
        self.liars = args.liars if "liar" in args.scenarios else 0
        self.results = {}  # scenario -> figures
        self.blob_path = os.path.join(self.work, "blob")
        self.secret = os.path.join(self.work, "fleet-secret")
        with open(self.secret, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        # The central berth: one berth, or --replicas of them (a cluster).
        self.replicas = max(1, args.replicas)
        self.cluster_secret = os.path.join(self.work, "cluster-secret")
        with open(self.cluster_secret, "w") as f:
            f.write(os.urandom(32).hex() + "\n")

    # -- the network --

    def ns(self, short):
        return f"{self.prefix}-{short}"

    def add_ns(self, short, ip=None, rate=None):
        """A namespace with a capped link to the bridge; `ip` its address."""
        name = self.ns(short)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        if ip:
            sw, port = self.ns("sw"), f"s-{short}"
            sh("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
            sh("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
            self.cap(short, rate or self.args.rate)
        return name

    def cap(self, short, rate, dev="eth0", port=None):
        """The token bucket on both ends of `short`'s link: its upload and its download."""
        for ns, d in ((self.ns(short), dev), (self.ns("sw"), port or f"s-{short}")):
            sh("tc", "-n", ns, "qdisc", "replace", "dev", d, "root", "tbf", "rate", rate,
               "burst", self.args.burst, "latency", "50ms")

    def add_replica_link(self, short, ip, rate=None):
        """A replica's second link (eth1, capped like the first, or at `rate`) to the replicas' own
        bridge."""
        name, sw, port = self.ns(short), self.ns("sw"), f"r-{short}"
        sh("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth1", "netns", name)
        sh("ip", "-n", sw, "link", "set", port, "master", "br1", "up")
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth1")
        sh("ip", "-n", name, "link", "set", "eth1", "up")
        self.cap(short, rate or self.args.rate, "eth1", port)

    def tx_bytes(self, short, dev="eth0", way="tx"):
        """Bytes sent by `short` over its link (its eth0's tx counter; `dev` another, `way` rx)."""
        out = sh("ip", "-n", self.ns(short), "-j", "-s", "link", "show", "dev", dev, capture=True)
        return json.loads(out)[0]["stats64"][way]["bytes"]

    # -- the central berth's replicas --

    def central_short(self, k):
        return "c" if k == 0 else f"c{k}"

    def central_ip(self, k):
        """Replica k's address on the nodes' bridge (replica 0 is the lone central berth's)."""
        return f"{self.net}.3" if k == 0 else f"{self.net}.{240 + k}"

    def cluster_ip(self, k):
        """Replica k's address on the replicas' own bridge."""
        return f"10.214.{os.getpid() % 256}.{10 + k}"

    def s3_ip(self):
        """The bucket's address, on the replicas' bridge."""
        return f"10.214.{os.getpid() % 256}.240"

    def owner_of(self, digest):
        """The short name of `digest`'s owner replica, as the cluster ranks them (src/cluster/ring.rs:
        the highest first 8 bytes of sha256(peer origin "\\n" digest))."""
        def weight(k):
            h = hashlib.sha256(f"http://{self.cluster_ip(k)}:{PORT}\n{digest}".encode()).digest()
            return int.from_bytes(h[:8], "big")
        return self.central_short(max(range(self.replicas), key=weight))

    def parent_of(self, k):
        """Node k's parent: a replica, the nodes spread over them in turn."""
        return f"http://{self.central_ip(k % self.replicas)}:{PORT}"

    def build(self):
        sweep_stale()
        log(f"bed {self.prefix}: {self.n} nodes on {self.net}.0/24, links {self.args.rate} each way")
        sw = self.add_ns("sw")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        self.add_ns("up", f"{self.net}.2")
        self.add_ns("c", f"{self.net}.3")
        if self.args.bucket:
            self.add_ns("s3")
        if self.replicas > 1:
            sh("ip", "-n", sw, "link", "add", "br1", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br1", "up")
            for k in range(1, self.replicas):
                self.add_ns(self.central_short(k), self.central_ip(k))
            for k in range(self.replicas):
                self.add_replica_link(self.central_short(k), self.cluster_ip(k))
            if self.args.bucket:
                self.add_replica_link("s3", self.s3_ip(), self.args.bucket_rate)
        for j in range(self.liars):
            self.add_ns(f"l{j}", self.liar_ip(j))
        for k in range(self.n):
            self.add_ns(f"n{k}", f"{self.net}.{10 + k}")

    def cleanup(self):
        for p in self.clients:
            if p.poll() is None:
                p.kill()
                p.wait()
        for p in reversed(self.procs):
            p.stop(signal.SIGKILL)
        self.procs.clear()
        for name in reversed(self.namespaces):
            del_ns(name)
        self.namespaces.clear()
        if self.args.keep:
            open(os.path.join(self.work, KEPT), "w").close()
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- processes --

    def start(self, name, short, argv, **kw):
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        p = Proc(name, self.ns(short), argv, os.path.join(d, "log"), **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM):
        p.stop(sig)
        self.procs.remove(p)

    def curl(self, short, *args):
        return subprocess.run(["ip", "netns", "exec", self.ns(short), "curl", "-s", *args], capture_output=True, text=True)

    def wait_http(self, short, url, proc, within=30):
        deadline = time.monotonic() + within
        while True:
            if proc.proc.poll() is not None:
                raise Failed(f"{proc.name} exited during startup (see {proc.log_path})")
            if self.curl(short, "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url).stdout not in ("", "000"):
                return
            if time.monotonic() > deadline:
                raise Failed(f"{proc.name} not ready at {url} after {within} s (see {proc.log_path})")
            time.sleep(0.1)

    def scrape(self, short, ip):
        r = self.curl(short, "--max-time", "5", f"http://{ip}:{MPORT}/metrics")
        if r.returncode != 0:
            raise Failed(f"metrics of {short} unreachable")
        return r.stdout

    # -- upstream --

    def start_upstream(self):
        ip = f"{self.net}.2"
        self.upstream = f"{ip}:{PORT}"
        d = os.path.join(self.work, "upstream")
        os.makedirs(os.path.join(d, "data"))
        conf = os.path.join(d, "config.yml")
        registry_config(conf, f"{d}/data", self.upstream)
        self.registry = self.start("upstream", "up", ["docker-registry", "serve", conf])
        self.wait_http("up", f"http://{self.upstream}/v2/", self.registry)

    def seed(self, keep=False):
        """A fresh random blob in the registry (pushed inside its own namespace, over its
        loopback, so uncapped); its digest. With `keep`, the file stays at `self.blob_path` (a
        liar serves it with a byte flipped)."""
        path = self.blob_path
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for _ in range(self.args.blob_mib):
                chunk = os.urandom(1 << 20)
                h.update(chunk)
                f.write(chunk)
        digest = "sha256:" + h.hexdigest()
        base = f"http://{self.upstream}"
        out = self.curl("up", "-f", "-X", "POST", "-D", "-", "-o", "/dev/null", f"{base}/v2/{REPO}/blobs/uploads/").stdout
        loc = next((ln.split(None, 1)[1].strip() for ln in out.splitlines() if ln.lower().startswith("location:")), None)
        if not loc:
            raise Failed("the registry gave no upload location")
        loc = (loc if loc.startswith("http") else base + loc) + ("&" if "?" in loc else "?") + "digest=" + digest
        r = self.curl("up", "-f", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                      "--data-binary", "@" + path, "-o", "/dev/null", loc)
        if not keep:
            os.unlink(path)
        if r.returncode != 0:
            raise Failed(f"pushing the blob failed: {r.stderr}")
        return digest

    def upstream_gets(self, digest):
        needle = f'"GET /v2/{REPO}/blobs/{digest} HTTP'
        with open(self.registry.log_path, errors="replace") as f:
            return sum(1 for line in f if needle in line)

    # -- berths --

    def berth_conf(self, name, ip, tables, listen=None):
        d = os.path.join(self.work, name)
        shutil.rmtree(os.path.join(d, "data"), ignore_errors=True)
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        path = os.path.join(d, "config.toml")
        with open(path, "w") as f:
            f.write(
                f'[server]\nlisten = "{listen or ip}:{PORT}"\n[metrics]\nlisten = "{ip}:{MPORT}"\n'
                f'[storage]\npath = "{d}/data"\n{tables}'
            )
        return path

    def start_central(self):
        ip = f"{self.net}.3"
        self.central_url = f"http://{ip}:{PORT}"
        if self.replicas > 1:
            return self.start_replicas()
        conf = self.berth_conf(
            "central", ip,
            f'[fleet]\nsecret_file = "{self.secret}"\n'
            f'[[upstream]]\nname = "{self.upstream}"\nurl = "http://{self.upstream}"\ndefault = true\n',
        )
        self.central = self.start("central", "c", [self.args.berth, "serve", "--config", conf])
        self.wait_http("c", f"http://{ip}:{MPORT}/healthz", self.central)

    # -- the bucket (--bucket) --

    def start_bucket(self):
        """Ceph in the `-s3` namespace (radosgw on its address, the rest on its own loopback), and
        one bucket."""
        ip = self.s3_ip()
        self.rgw = f"http://{ip}:{RGW_PORT}"
        log(f"starting ceph (radosgw on {self.rgw})")
        script = os.path.join(self.work, "start-ceph.sh")
        with open(CEPH) as f:
            text = f.read()
        if "endpoint=127.0.0.1:$PORT" not in text:
            raise Failed(f"{CEPH}: no radosgw endpoint line to point at the namespace's address")
        with open(script, "w") as f:
            f.write(text.replace("endpoint=127.0.0.1:$PORT", "endpoint=0.0.0.0:$PORT"))
        env = dict(os.environ, CEPH_DIR=os.path.join(self.work, "ceph"), RGW_PORT=str(RGW_PORT))
        r = subprocess.run(["ip", "netns", "exec", self.ns("s3"), "bash", script], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Failed(f"ceph did not start: {r.stderr.strip()[-2000:]}")
        made = self.s3("make")
        if made.returncode != 0:
            raise Failed(f"creating the bucket: {made.stderr.strip()[-1000:]}")
        self.s3_secret = os.path.join(self.work, "s3-secret")
        with open(self.s3_secret, "w") as f:
            f.write("testsecret\n")

    def s3(self, op, *args):
        """The bucket's client (S3_CLIENT) run in the gateway's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.ns("s3"), sys.executable, "-c", S3_CLIENT,
                               self.rgw, op, BUCKET, *args], capture_output=True, text=True)

    def in_bucket(self, digest):
        return self.s3("has", f"blobs/sha256/{digest[7:]}").returncode == 0

    def s3_table(self):
        """A replica's [storage.s3], with --bucket."""
        if not self.args.bucket:
            return ""
        return (f'[storage.s3]\nbucket = "{BUCKET}"\nendpoint = "{self.rgw}"\nregion = "us-east-1"\n'
                f'access_key_id = "testkey"\nsecret_access_key_file = "{self.s3_secret}"\n')

    def warm_bucket(self, digest):
        """`bucket`: `digest` pulled once through replica 0 and uploaded; then every replica
        restarted with an empty disk."""
        url = f"http://{self.central_ip(0)}:{PORT}/v2/{REPO}/blobs/{digest}"
        got = self.curl("c", "-f", "-o", "/dev/null", "-w", "%{http_code}", url)
        if got.stdout != "200":
            raise Failed(f"warming the bucket: GET {url}: {got.stdout} {got.stderr}")
        deadline = time.monotonic() + 120
        while not self.in_bucket(digest):
            if time.monotonic() > deadline:
                raise Failed("the blob never reached the bucket (see the replicas' logs)")
            time.sleep(0.2)
        for p in list(self.replica_procs):
            self.stop(p)
        self.start_replicas()

    def start_replicas(self):
        """The central berth as --replicas berths of one cluster (each also the fleet's parent),
        peers to each other over their own bridge; returns once each sees all of them up."""
        peers = [f"http://{self.cluster_ip(k)}:{PORT}" for k in range(self.replicas)]
        procs = self.replica_procs = []
        for k in range(self.replicas):
            short, ip = self.central_short(k), self.central_ip(k)
            conf = self.berth_conf(
                "central" if k == 0 else f"central{k}", ip,
                self.s3_table() +
                f'[fleet]\nsecret_file = "{self.secret}"\n'
                f'[cluster]\nself = "{peers[k]}"\npeers = {json.dumps(peers)}\n'
                f'secret_file = "{self.cluster_secret}"\nhealth_interval = "500ms"\n'
                f'[[upstream]]\nname = "{self.upstream}"\nurl = "http://{self.upstream}"\ndefault = true\n',
                listen="0.0.0.0",
            )
            procs.append(self.start(f"central{k or ''}", short, [self.args.berth, "serve", "--config", conf]))
        self.central = procs[0]
        for k, p in enumerate(procs):
            self.wait_http(self.central_short(k), f"http://{self.central_ip(k)}:{MPORT}/healthz", p)
        deadline = time.monotonic() + 30
        for k in range(self.replicas):
            short, ip = self.central_short(k), self.central_ip(k)
            while metric(self.scrape(short, ip), 'berth_cluster_peers{state="up"}') < self.replicas:
                if time.monotonic() > deadline:
                    raise Failed(f"replica {k} never saw all {self.replicas} replicas up (see {procs[k].log_path})")
                time.sleep(0.1)

    def liar_ip(self, j):
        return f"{self.net}.{4 + j}"

    def start_nodes(self, liars=0):
        """Every node berth, with an empty disk (stopped first if running); the first `liars`
        lying nodes' URLs in every node's peers, as nodes of the fleet."""
        for node in self.nodes:
            if node["proc"] in self.procs:
                self.stop(node["proc"])
        self.nodes = []
        urls = [f"http://{self.net}.{10 + k}:{PORT}" for k in range(self.n)]
        peers = urls + [f"http://{self.liar_ip(j)}:{PORT}" for j in range(liars)]
        for k in range(self.n):
            ip = f"{self.net}.{10 + k}"
            conf = self.berth_conf(
                f"n{k}", ip,
                f'[fleet]\nparent = "{self.parent_of(k)}"\nself = "{urls[k]}"\npeers = {json.dumps(peers)}\n'
                f'secret_file = "{self.secret}"\n',
            )
            proc = self.start(f"n{k}", f"n{k}", [self.args.berth, "serve", "--config", conf])
            self.nodes.append({"short": f"n{k}", "ip": ip, "proc": proc, "data": os.path.join(self.work, f"n{k}", "data")})
        for node in self.nodes:
            self.wait_http(node["short"], f"http://{node['ip']}:{MPORT}/healthz", node["proc"])

    # -- lying nodes --

    def start_liars(self, digest):
        """The lying nodes of `liar` (benches/load/liar.py), each in its namespace, listening and
        waiting for the common start; their procs."""
        liars = []
        for j in range(self.liars):
            ip = self.liar_ip(j)
            argv = [sys.executable, LIAR, "--listen", f"{ip}:{PORT}", "--self", f"http://{ip}:{PORT}",
                    "--parent", self.central_url, "--secret-file", self.secret, "--digest", digest,
                    "--size", str(self.size), "--claim", self.args.liar_claim, "--bytes", self.args.liar_bytes,
                    "--blob", self.blob_path, "--piece", str(self.args.liar_piece),
                    "--uploads", str(self.args.liar_uploads)]
            p = self.start(f"l{j}", f"l{j}", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if p.proc.stdout.readline().strip() != "ready":
                raise Failed(f"the liar l{j} did not start (see {p.log_path})")
            liars.append(p)
        return liars

    def stop_liars(self, liars):
        """Each liar's own counters (GET /_liar/stats), then stops it."""
        stats = []
        for j, p in enumerate(liars):
            r = self.curl(f"l{j}", "--max-time", "5", f"http://{self.liar_ip(j)}:{PORT}/_liar/stats")
            try:
                stats.append(json.loads(r.stdout))
            except ValueError:
                raise Failed(f"the liar l{j} gave no stats (see {p.log_path})") from None
            self.stop(p, signal.SIGKILL)
        return stats

    # -- a scenario --

    def counters(self, nodes):
        shorts = [self.central_short(k) for k in range(self.replicas)]
        texts = [self.scrape(self.central_short(k), self.central_ip(k)) for k in range(self.replicas)]
        return {
            "up_tx": self.tx_bytes("up"),
            # The central berth, summed over its replicas: to nodes (eth0), to each other (eth1).
            "c_tx": sum(self.tx_bytes(s) for s in shorts),
            "c_eth1_tx": sum(self.tx_bytes(s, "eth1") for s in shorts) if self.replicas > 1 else 0,
            "c_fetched": sum(metric(c, "berth_upstream_fetched_bytes_total") for c in texts),
            "c_served": sum(metric(c, "berth_served_bytes_total") for c in texts),
            "c_forwarded": sum(metric(c, 'berth_fleet_owner_calls_total{result="owner"}') for c in texts),
            # The bucket's link: reads out of it, uploads into it (the rest of the replicas' eth1
            # tx is what they sent each other).
            "s3_tx": self.tx_bytes("s3", "eth1") if self.args.bucket else 0,
            "s3_rx": self.tx_bytes("s3", "eth1", "rx") if self.args.bucket else 0,
            # Each replica's GETs the bucket answered (a fill's source, or a piece table's read).
            **{f"s3_gets{k}": metric(c, 'berth_bucket_requests_total{op="get",outcome="ok"}') for k, c in enumerate(texts)},
            # A node's bytes from the parent: through the swarm's driver, or the old way (a fill
            # the swarm left, or without it); from other nodes: through the swarm only.
            **self.node_bytes(nodes),
        }

    def node_bytes(self, nodes):
        """The nodes' swarm counters, summed: bytes from the parent and from peers, pieces
        rejected, sources dropped by reason (`drop_<reason>`)."""
        c = {"n_parent": 0.0, "n_peer": 0.0, "rejected": 0.0} | {f"drop_{r}": 0.0 for r in REASONS}
        for n in nodes:
            if n["proc"].proc.poll() is not None:
                continue
            text = self.scrape(n["short"], n["ip"])
            c["n_parent"] += metric(text, "berth_upstream_fetched_bytes_total")
            c["n_parent"] += metric(text, 'berth_fleet_bytes_total{source="parent"}')
            c["n_peer"] += metric(text, 'berth_fleet_bytes_total{source="peer"}')
            c["rejected"] += metric(text, "berth_fleet_pieces_rejected_total")
            for r in REASONS:
                c[f"drop_{r}"] += metric(text, f'berth_fleet_peers_dropped_total{{reason="{r}"}}')
        return c

    def pull(self, name, nodes, digest, kill=False, liars=()):
        """Every node in `nodes` pulls `digest` at once from its own node berth (the `liars`
        released just before, once each has joined the swarm and made its claim): each client's
        report, the node killed (if `kill`), the time the clients were released."""
        clients = []
        for n in nodes:
            progress = os.path.join(self.work, f"{name}-{n['short']}.progress")
            url = f"http://{n['ip']}:{PORT}/v2/{REPO}/blobs/{digest}"
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(n["short"]), sys.executable, "-c", CLIENT, url, progress,
                 str(max(1 << 16, min(4 << 20, self.size // 64)))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            clients.append((n, p, progress))
            self.clients.append(p)
        for n, p, _ in clients:
            if p.stdout.readline().strip() != "ready":
                raise Failed(f"the client of {n['short']} did not start")
        for liar in liars:
            liar.proc.stdin.write("\n")
            liar.proc.stdin.flush()
        for liar in liars:
            joined = liar.proc.stdout.readline().split()
            if joined != ["joined", "200", "200"]:
                raise Failed(f"the liar {liar.name} was not taken by the tracker: {joined} (see {liar.log_path})")
        own = {}
        if name == "slow" and self.args.slow_first:
            # n0 first, alone until the tracker has answered its join (the parent's only slot
            # is then its), so that the slow node heads the chain; its time counts from its own
            # release, the others' from theirs.
            n0 = next(c for c in clients if c[0]["short"] == "n0")
            joins = self.tracker_joins()
            own["n0"] = time.time()
            n0[1].stdin.write("\n")
            n0[1].stdin.flush()
            deadline = time.monotonic() + 10
            while self.tracker_joins() == joins and time.monotonic() < deadline:
                time.sleep(0.02)
        go = time.time()
        for n, p, _ in clients:
            if n["short"] in own:
                continue
            p.stdin.write("\n")
            p.stdin.flush()
        victim = None
        if kill:
            victim = self.kill_first_half(clients)
        out = []
        for n, p, _ in clients:
            line = p.stdout.readline()
            p.wait()
            r = json.loads(line) if line.strip() else {"status": 0, "bytes": 0, "sha256": "", "end": time.time(), "err": "no report"}
            r["node"], r["time"] = n["short"], r["end"] - own.get(n["short"], go)
            r["verdict"] = (
                "verified" if r["status"] == 200 and r["bytes"] == self.size and "sha256:" + r["sha256"] == digest
                else "wrong" if r["bytes"] == self.size and not r["err"]
                else "failed"
            )
            out.append(r)
        self.clients.clear()
        return out, victim, go

    def tracker_joins(self):
        """The central berth's tracker answers that named a source, over its replicas (`--slow-first`)."""
        total = 0
        for k in range(self.replicas):
            c = self.scrape(self.central_short(k), self.central_ip(k))
            total += sum(metric(c, f'berth_fleet_tracker_requests_total{{outcome="{o}"}}')
                         for o in ("assigned_parent", "assigned_node"))
        return total

    def kill_first_half(self, clients):
        """SIGKILLs the berth of the first node whose client has half the blob; returns it."""
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            for n, p, progress in clients:
                try:
                    with open(progress) as f:
                        lines = f.read().split("\n")
                    have = int(lines[-2].split()[1]) if len(lines) > 1 else 0
                except (OSError, ValueError, IndexError):
                    continue
                if have >= self.size // 2:
                    log(f"killing {n['short']}'s berth at {have >> 20} MiB")
                    self.stop(n["proc"], signal.SIGKILL)
                    self.killed_at = time.time()
                    return n["short"]
            if all(p.poll() is not None for _, p, _ in clients):
                return None
            time.sleep(0.05)
        return None

    def scenario(self, name):
        lying = self.liars if name == "liar" else 0
        digest = self.seed(keep=lying > 0)
        if name == "bucket":
            self.warm_bucket(digest)
        self.start_nodes(liars=lying)
        liars = self.start_liars(digest) if lying else []
        nodes = self.nodes[:1] if name == "single" else self.nodes
        if name == "slow":
            self.cap("n0", self.args.slow_rate)
        before = self.counters(nodes)
        gets0 = self.upstream_gets(digest)
        log(f"{name}: {len(nodes)} node(s) pull {self.args.blob_mib} MiB ({digest[:19]}...)")
        self.killed_at = None
        got, victim, go = self.pull(name, nodes, digest, kill=name == "kill", liars=liars)
        liar_stats = self.stop_liars(liars)
        # The registry logs a request after answering it, the central berth commits after its
        # last byte: wait (bounded) for the one GET line before counting.
        deadline = time.monotonic() + 10
        while self.upstream_gets(digest) == gets0 and time.monotonic() < deadline:
            time.sleep(0.1)
        # With a bucket, the blob's upload (after the fill's commit) is counted in its own
        # scenario, not the next one's.
        deadline = time.monotonic() + 120
        while self.args.bucket and not self.in_bucket(digest) and time.monotonic() < deadline:
            time.sleep(0.2)
        after = self.counters(nodes)
        if name == "slow":
            self.cap("n0", self.args.rate)
        delta = {k: after[k] - before[k] for k in after}
        blobs = {k: v / self.size for k, v in delta.items()}
        ok = sorted(r["time"] for r in got if r["verdict"] == "verified")
        fig = {
            "nodes": len(nodes),
            "verified": len(ok),
            "failed": sum(r["verdict"] == "failed" for r in got),
            "wrong": sum(r["verdict"] == "wrong" for r in got),
            "victim": victim,
            # Seconds from the clients' release to the kill.
            "killed_at": self.killed_at - go if self.killed_at else None,
            "slow_node_time": next((r["time"] for r in got if r["node"] == "n0"), None) if name == "slow" else None,
            "p99_others": nearest_rank(
                sorted(r["time"] for r in got if r["verdict"] == "verified" and r["node"] != "n0"), 99
            ) if name == "slow" else None,
            "p50": nearest_rank(ok, 50),
            "p99": nearest_rank(ok, 99),
            "max": ok[-1] if ok else None,
            "upstream_gets": self.upstream_gets(digest) - gets0,
            "upstream_tx_blobs": blobs["up_tx"],
            "central_fetched_blobs": blobs["c_fetched"],
            "central_tx_blobs": blobs["c_tx"],
            "central_served_blobs": blobs["c_served"],
            "replicas": self.replicas,
            "central_peer_tx_blobs": blobs["c_eth1_tx"] - blobs["s3_rx"] if self.replicas > 1 else None,
            "owner_forwarded": int(delta["c_forwarded"]) if self.replicas > 1 else None,
            "owner": self.owner_of(digest) if self.replicas > 1 else None,
            "bucket_tx_blobs": blobs["s3_tx"] if self.args.bucket else None,
            "bucket_rx_blobs": blobs["s3_rx"] if self.args.bucket else None,
            "bucket_gets": " / ".join(str(int(delta[f"s3_gets{k}"])) for k in range(self.replicas))
            if self.args.bucket else None,
            "nodes_from_parent_blobs": blobs["n_parent"],
            "nodes_from_peers_blobs": blobs["n_peer"],
            "pieces_rejected": int(delta["rejected"]),
            "peers_dropped": {r: int(delta[f"drop_{r}"]) for r in REASONS if delta[f"drop_{r}"]},
            "liars": lying or None,
            "liar_blobs": sum(st["bytes"] for st in liar_stats) / self.size if lying else None,
            "liar_requests": sum(st["requests"] for st in liar_stats) if lying else None,
            "liar_tracker_refused": sum(c["status"] != 200 for st in liar_stats for c in st["tracker"]) if lying else None,
            "clients": [{k: r[k] for k in ("node", "verdict", "status", "bytes", "time", "err")} for r in got],
        }
        for r in got:
            if r["verdict"] != "verified" and r["node"] != victim:
                log(f"WARNING: {r['node']}: {r['verdict']} (status {r['status']}, {r['bytes']} bytes, {r['err']})")
        self.results[name] = fig
        log(
            f"{name}: {fig['verified']}/{fig['nodes']} verified, p50 {fmt(fig['p50'])} s, p99 {fmt(fig['p99'])} s, "
            f"upstream {fig['upstream_tx_blobs']:.2f} blobs, central out {fig['central_tx_blobs']:.2f} blobs"
        )
        # Frees the disk: the central's copy (the next scenario has its own blob), the liar's.
        centrals = [os.path.join(self.work, f"central{k or ''}", "data", "blobs", "sha256", digest[7:])
                    for k in range(self.replicas)]
        for path in (*centrals, self.blob_path):
            try:
                os.unlink(path)
            except OSError:
                pass

    def run(self):
        self.load = [open("/proc/loadavg").read().split()[:3]]
        self.build()
        self.start_upstream()
        if self.args.bucket:
            self.start_bucket()
        self.start_central()
        for name in self.args.scenarios:
            self.scenario(name)
        for node in self.nodes:
            if node["proc"] in self.procs:
                self.stop(node["proc"])
        self.load.append(open("/proc/loadavg").read().split()[:3])

    # -- report --

    def report(self):
        single = (self.results.get("single") or {}).get("p50")
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        heads = [s for s in self.args.scenarios]

        def cell(s, key, form="{:.2f}"):
            v = self.results[s].get(key)
            return "–" if v is None else form.format(v) if not isinstance(v, str) else v

        def ratio(s, key):
            v = self.results[s].get(key)
            return f"{v / single:.2f}" if v and single else "–"

        rows = [
            ("nodes pulling", lambda s: str(self.results[s]["nodes"])),
            ("verified / failed / wrong bodies", lambda s: f"{self.results[s]['verified']} / {self.results[s]['failed']} / {self.results[s]['wrong']}"),
            ("node killed (its own pull fails)", lambda s: self.results[s]["victim"] or "–"),
            ("killed at s", lambda s: cell(s, "killed_at")),
            ("the slow node's own pull s (n0)", lambda s: cell(s, "slow_node_time")),
            ("p99 s without the slow node", lambda s: cell(s, "p99_others")),
            ("p50 s to a verified blob", lambda s: cell(s, "p50")),
            ("p99 s to a verified blob", lambda s: cell(s, "p99")),
            ("max s", lambda s: cell(s, "max")),
            ("p50 / single", lambda s: ratio(s, "p50")),
            ("p99 / single (target <= 1.5)", lambda s: ratio(s, "p99")),
            ("upstream GETs of the blob (registry log)", lambda s: str(self.results[s]["upstream_gets"])),
            ("upstream bytes out, blobs (veth tx; target 1)", lambda s: cell(s, "upstream_tx_blobs")),
            ("central: fetched from upstream, blobs (metrics)", lambda s: cell(s, "central_fetched_blobs")),
            ("central: bytes out, blobs (veth tx; target <= 2)", lambda s: cell(s, "central_tx_blobs")),
            ("central: served, blobs (berth_served_bytes_total)", lambda s: cell(s, "central_served_blobs")),
            ("central: replicas", lambda s: str(self.results[s].get("replicas", 1))),
            ("central: between replicas, blobs (eth1 tx, less the bucket's rx)", lambda s: cell(s, "central_peer_tx_blobs")),
            ("central: the digest's owner replica", lambda s: self.results[s].get("owner") or "–"),
            ("central: tracker calls forwarded to the owner", lambda s: cell(s, "owner_forwarded", "{}")),
            ("bucket: read, blobs (its veth tx)", lambda s: cell(s, "bucket_tx_blobs")),
            ("bucket: uploaded, blobs (its veth rx)", lambda s: cell(s, "bucket_rx_blobs")),
            ("bucket: GETs answered, per replica (c / c1 / ..)", lambda s: cell(s, "bucket_gets", "{}")),
            ("nodes: got from the parent, blobs (metrics)", lambda s: cell(s, "nodes_from_parent_blobs")),
            ("nodes: got from other nodes, blobs (metrics)", lambda s: cell(s, "nodes_from_peers_blobs")),
            ("nodes: pieces rejected (summed)", lambda s: str(self.results[s]["pieces_rejected"])),
            ("nodes: sources dropped, by reason (summed)",
             lambda s: ", ".join(f"{r} {n}" for r, n in self.results[s]["peers_dropped"].items()) or "0"),
            ("lying nodes", lambda s: str(self.results[s]["liars"] or "–")),
            ("liars: bytes sent, blobs (their counter)", lambda s: cell(s, "liar_blobs")),
            ("liars: blob requests answered", lambda s: cell(s, "liar_requests", "{}")),
        ]
        commit = git("rev-parse", "--short", "HEAD")
        lines = [
            f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}, HEAD {commit}, {os.cpu_count()} cores ({cpu}); "
            f"{self.n} nodes, blob {self.args.blob_mib} MiB, every link {self.args.rate} each way (tbf burst "
            f"{self.args.burst}), slow link {self.args.slow_rate}{' (first)' if self.args.slow_first else ''}{', --quick' if self.args.quick else ''}"
            f"{f', central berth as {self.replicas} replicas' if self.replicas > 1 else ''}"
            f"{f' over one Ceph RGW bucket (its link {self.args.bucket_rate or self.args.rate})' if self.args.bucket else ''}. "
            f"Load average before: {' '.join(self.load[0])}, after: {' '.join(self.load[-1])}.",
            "",
            "| figure | " + " | ".join(heads) + " |",
            "|---" * (len(heads) + 1) + "|",
        ]
        for label, f in rows:
            lines.append(f"| {label} | " + " | ".join(f(s) for s in heads) + " |")
        lines += [
            "",
            "Times run from the common start (every client released at once) to each client's last "
            "byte, hashed as it arrived; p99 is the nearest rank over the verified pulls. Blobs are "
            "byte counts / blob size (veth counters include TCP/IP headers, about 3%).",
        ]
        text = "\n".join(lines) + "\n"
        write_report(self.args.out, text)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump({"size": self.size, "nodes": self.n, "scenarios": self.results}, f, indent=1)


def nearest_rank(sorted_vals, pct):
    if not sorted_vals:
        return None
    k = max(1, -(-pct * len(sorted_vals) // 100))
    return sorted_vals[k - 1]


def fmt(v):
    return "–" if v is None else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 nodes, 32 MiB")
    ap.add_argument("--nodes", type=int, help="node berths (default 16; --quick 8)")
    ap.add_argument("--blob-mib", type=int, help="blob size (default 256; --quick 32)")
    ap.add_argument("--rate", default="200mbit", help="every link's cap, each way (tc tbf rate)")
    ap.add_argument("--slow-rate", help="the slow node's cap in `slow` (default: rate / 10)")
    ap.add_argument("--slow-first", action="store_true",
                    help="in `slow`, release n0 first and the others once the tracker answered its join "
                         "(n0 heads the chain: the worst place for a slow node)")
    ap.add_argument("--burst", default="64kb", help="tbf burst")
    ap.add_argument("--scenarios", default=",".join(s for s in SCENARIOS if s != "bucket"))
    ap.add_argument("--liars", type=int, default=1, help="lying nodes in `liar` (1 to 6)")
    ap.add_argument("--liar-claim", choices=("complete", "progress"), default="complete",
                    help="what the liars tell the tracker (liar.py --claim)")
    ap.add_argument("--liar-bytes", choices=("flip", "garbage"), default="flip",
                    help="what the liars serve (liar.py --bytes)")
    ap.add_argument("--liar-piece", type=int, default=0, help="the piece a flipping liar spoils")
    ap.add_argument("--liar-uploads", type=int, default=4,
                    help="upload slots each liar announces (1 to 64; 4 is a node's default)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches/load/last-fleet-run.md"))
    ap.add_argument("--json", help="also write the figures as JSON here")
    ap.add_argument("--berth", help="a berth binary (default: cargo build --release, target/release/berth)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--bucket", action="store_true",
                    help="the replicas over one bucket (Ceph RGW in a namespace of its own); needs --replicas >= 2")
    ap.add_argument("--bucket-rate", help="the bucket's link cap, each way (default: --rate)")
    ap.add_argument("--replicas", type=int, default=1,
                    help="the central berth as this many replicas of one cluster (1 to 8; the nodes spread over them)")
    args = ap.parse_args()
    args.nodes = args.nodes or (8 if args.quick else 16)
    args.blob_mib = args.blob_mib or (32 if args.quick else 256)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    if not 1 <= args.nodes <= 200:
        ap.error("--nodes: 1 to 200")
    if not 1 <= args.replicas <= 8:
        ap.error("--replicas: 1 to 8")
    if args.bucket and args.replicas < 2:
        ap.error("--bucket: the replicas' bucket; give --replicas 2 or more")
    if "bucket" in args.scenarios and not args.bucket:
        ap.error("scenario bucket: give --bucket")
    if not 1 <= args.liars <= 6:
        ap.error("--liars: 1 to 6")
    if not 1 <= args.liar_uploads <= 64:
        ap.error("--liar-uploads: 1 to 64")
    if not args.slow_rate:
        m = re.match(r"^(\d+)(\w*)$", args.rate)
        if not m:
            ap.error("--rate: a number and a tc unit (200mbit), or give --slow-rate")
        args.slow_rate = f"{max(1, int(m.group(1)) // 10)}{m.group(2)}"
    try:
        ensure_deps(args.bucket)
    except Failed as e:
        log(f"FAILED: {e}")
        return 1
    args.berth = berth_binary(args.berth)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    # Ctrl-C cleans up too, even when started from a shell that ignores SIGINT in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return run(Bed(args))


if __name__ == "__main__":
    sys.exit(main())
