#!/usr/bin/env python3
"""Cluster and bucket-tier load harness (issue 8's benchmarks): berth replicas over one Ceph RGW
bucket against a single berth and against the Distribution registry on the same RGW.

Design questions, answered as ratios measured in one run on one machine:
  1. Do 3 replicas over one bucket fetch a fresh blob from upstream once when 32 clients pull it
     at once, spread over the replicas (target: 1 fetch), and at what cost in wall time against
     one replica alone (target: <= 1.3x)?
  2. What does a hit from the bucket tier (a replica with an empty disk over a bucket holding the
     blob) cost against a hit from local disk, in GB/s and berth's CPU s/GB; and is the local-disk
     hit of a berth with [storage.s3] the same as one without it (today's berth)?
  3. How does the Distribution registry (docker-registry, S3 storage driver, proxy mode) on the
     same RGW compare, cold and warm?

Started here, each in its own temp dir on its own loopback port, all stopped on exit:
  ceph       tests/ceph/start-ceph.sh: mon + memstore OSD + radosgw on --rgw-port (19303) and
             --mon-port (13500); one bucket, and a fresh key prefix for every cold figure
  origin     docker-registry (filesystem storage) seeded with one random blob; its access log
             counts upstream fetches (GET lines of the blob's path)
  berth      target/release/berth serve, as
               disk   one replica, local disk only (today's berth)
               s3     one replica over the bucket ([storage.s3])
               x3     three replicas over the bucket with [cluster] (self, peers, secret_file)
  registry   docker-registry in proxy mode (proxy: remoteurl: origin) with storage: s3: on the
             same RGW (redirect disabled, so it serves the bytes itself as berth does)

Usage: python3 benches/load/cluster.py [--quick] [--out FILE] [--berth BIN] [--keep]
  --quick  64 MiB blob, one round: a smoke test of the harness (~1 min)
  full     256 MiB blob (issue 8's test), 3 rounds, each figure the median of its rounds (~5 min)
Rounds interleave the subjects (disk, s3, x3, registry, then again), so a change in the shared
machine's load falls on all of them alike.
Needs root to apt-get install what is missing (docker-registry radosgw ceph-mon ceph-osd curl
uuid-runtime) and boto3 (pip) to create the bucket. Loopback only.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, Failed, apt_install, berth_binary, git, log, metric, registry_config, run, write_report  # noqa: E402,F401

REPO = "bench"
BUCKET = "berth-bench"
CONCURRENT = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")
APT = ["docker-registry", "radosgw", "ceph-mon", "ceph-osd", "curl", "uuid-runtime"]


# ---- dependencies ---------------------------------------------------------------------------


def ensure_deps():
    apt_install(APT)
    try:
        import boto3  # noqa: F401
    except ImportError:
        log("installing boto3 (pip)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "boto3"], check=True)


# ---- processes ------------------------------------------------------------------------------

_next_port = 20000 + os.getpid() % 20000


def free_port():
    """A loopback port nothing listens on; handed out upward so back-to-back servers differ."""
    global _next_port
    while True:
        p = _next_port
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p


class Server:
    """One started process: its Popen, its log, how to tell it is ready."""

    def __init__(self, name, argv, log_path, ready_url, env=None):
        self.name, self.log_path, self.ready_url = name, log_path, ready_url
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failed(f"{self.name} exited during startup (see {self.log_path})")
            try:
                urllib.request.urlopen(self.ready_url, timeout=1).read()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer: it serves
            except OSError:
                time.sleep(0.1)
        raise Failed(f"{self.name} not ready at {self.ready_url} after 30 s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def s3_client(endpoint):
    """A boto3 client of the bed's RGW user at `endpoint`, path-style."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testkey",
        aws_secret_access_key="testsecret",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def cpu_seconds(pids):
    """utime + stime of these processes, in seconds (comm may hold spaces: split after ')')."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


# ---- the run --------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.blob_mib = 64 if args.quick else 256
        self.runs = 1 if args.quick else 3
        self.work = tempfile.mkdtemp(prefix="berth-cluster.")
        self.servers = []
        self.ceph_dir = os.path.join(self.work, "ceph")
        self.ceph_started = False
        self.rgw = f"http://127.0.0.1:{args.rgw_port}"
        self.prefix_n = 0
        self.R = {}  # (figure, subject) -> value as reported
        self.S = {}  # (figure, subject) -> samples, one per round

    # -- lifetime --

    def cleanup(self):
        for s in reversed(self.servers):
            s.stop()
        self.servers.clear()
        if self.ceph_started:
            pids = self.ceph_pids()
            subprocess.run(
                ["bash", os.path.join(ROOT, "tests/ceph/stop-ceph.sh")],
                env=dict(os.environ, CEPH_DIR=self.ceph_dir),
            )
            # stop-ceph.sh waits 10 s; radosgw can take longer to exit on SIGTERM.
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.args.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def start(self, name, argv, ready_url, env=None):
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        s = Server(name, argv, os.path.join(d, "log"), ready_url, env)
        self.servers.append(s)
        return s

    def stop(self, s):
        s.stop()
        self.servers.remove(s)

    # -- ceph and the bucket --

    def start_ceph(self):
        log(f"starting ceph (radosgw on {self.rgw})")
        self.ceph_started = True
        subprocess.run(
            ["bash", os.path.join(ROOT, "tests/ceph/start-ceph.sh")],
            check=True,
            env=dict(
                os.environ,
                CEPH_DIR=self.ceph_dir,
                RGW_PORT=str(self.args.rgw_port),
                MON_PORT=str(self.args.mon_port),
            ),
            stdout=subprocess.DEVNULL,
        )
        self.s3 = s3_client(self.rgw)
        self.s3.create_bucket(Bucket=BUCKET)
        # RGW's first requests on a new bucket are slow (its index and caches): take that here,
        # not in the first figure. Time it, to say so in the log.
        t0 = time.monotonic()
        self.s3.put_object(Bucket=BUCKET, Key="warmup/x", Body=b"x")
        self.s3.get_object(Bucket=BUCKET, Key="warmup/x")["Body"].read()
        try:
            self.s3.head_object(Bucket=BUCKET, Key="warmup/missing")
        except Exception:  # noqa: BLE001 (404 expected)
            pass
        self.s3.delete_object(Bucket=BUCKET, Key="warmup/x")
        log(f"bucket {BUCKET} created; first requests took {time.monotonic() - t0:.3f} s")
        self.secret = os.path.join(self.work, "s3-secret")
        with open(self.secret, "w") as f:
            f.write("testsecret\n")

    def ceph_pids(self):
        pids = []
        run = os.path.join(self.ceph_dir, "run")
        for name in os.listdir(run) if os.path.isdir(run) else []:
            if name.endswith(".pid"):
                with open(os.path.join(run, name)) as f:
                    pids.append(int(f.read().strip()))
        return pids

    def fresh_prefix(self):
        """A key prefix no one has written under: the bucket is cold there."""
        self.prefix_n += 1
        return f"run{self.prefix_n}"

    def drop_prefix(self, prefix):
        """Deletes what a finished figure left in the bucket (memstore holds it all in RAM)."""
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
        # RGW only queues a deleted object's data for its garbage collector (2 h by default);
        # memstore keeps it in RAM until then. Collect now.
        subprocess.run(
            ["radosgw-admin", "-c", os.path.join(self.ceph_dir, "ceph.conf"), "gc", "process", "--include-all"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def in_bucket(self, key, within):
        """Whether `key` holds the whole blob, polled for up to `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            try:
                if self.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == self.size:
                    return True
            except Exception:  # noqa: BLE001 (404 until the upload completes)
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def wait_in_bucket(self, key):
        if not self.in_bucket(key, 120):
            raise Failed(f"{key} did not reach the bucket within 120 s")

    # -- origin --

    def start_origin(self):
        port = free_port()
        self.origin = f"http://127.0.0.1:{port}"
        d = os.path.join(self.work, "origin")
        os.makedirs(os.path.join(d, "data"))
        conf = os.path.join(d, "config.yml")
        registry_config(conf, f"{d}/data", f"127.0.0.1:{port}")
        self.origin_srv = self.start("origin", ["docker-registry", "serve", conf], self.origin + "/v2/")

        log(f"seeding origin with a random {self.blob_mib} MiB blob")
        blob = os.path.join(self.work, "blob")
        h = hashlib.sha256()
        with open(blob, "wb") as f:
            for _ in range(self.blob_mib):
                chunk = os.urandom(1 << 20)
                h.update(chunk)
                f.write(chunk)
        self.size = self.blob_mib << 20
        self.digest = "sha256:" + h.hexdigest()
        self.blob_path = f"/v2/{REPO}/blobs/{self.digest}"
        out = subprocess.run(
            ["curl", "-sf", "-X", "POST", "-D", "-", "-o", "/dev/null", f"{self.origin}/v2/{REPO}/blobs/uploads/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        loc = next(
            (line.split(None, 1)[1].strip() for line in out.splitlines() if line.lower().startswith("location:")),
            None,
        )
        if not loc:
            raise Failed("origin gave no upload location")
        if not loc.startswith("http"):
            loc = self.origin + loc
        loc += ("&" if "?" in loc else "?") + "digest=" + self.digest
        subprocess.run(
            ["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary", "@" + blob, "-o", "/dev/null", loc],
            check=True,
        )
        os.unlink(blob)
        got = self.pull(self.origin)
        if got["bytes"] != self.size:
            raise Failed("origin does not serve the seeded blob back")

    def origin_gets(self):
        """Upstream fetches so far: GET lines of the blob's path in the origin's access log."""
        needle = f'"GET {self.blob_path} HTTP'
        with open(self.origin_srv.log_path, errors="replace") as f:
            return sum(1 for line in f if needle in line)

    # -- berth --

    def start_berth(self, name, prefix=None, cluster=None, port=None):
        """One berth with an empty disk; over the bucket under `prefix` when given; `cluster` is
        (self_url, peers) for a replica."""
        d = os.path.join(self.work, name)
        shutil.rmtree(os.path.join(d, "data"), ignore_errors=True)
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        port = port or free_port()
        mport = free_port()
        conf = [
            f'[server]\nlisten = "127.0.0.1:{port}"\n',
            f'[metrics]\nlisten = "127.0.0.1:{mport}"\n',
            f'[storage]\npath = "{d}/data"\n',
        ]
        if prefix:
            conf.append(
                f'[storage.s3]\nbucket = "{BUCKET}"\nendpoint = "{self.rgw}"\nregion = "us-east-1"\n'
                f'prefix = "{prefix}/"\naccess_key_id = "testkey"\nsecret_access_key_file = "{self.secret}"\n'
                + getattr(self, "s3_extra", "")
            )
        if cluster:
            self_url, peers = cluster
            conf.append(
                f'[cluster]\nself = "{self_url}"\npeers = {json.dumps(peers)}\n'
                f'secret_file = "{self.cluster_secret}"\n'
            )
        conf.append(
            f'[[upstream]]\nname = "{self.origin[7:]}"\nurl = "{self.origin}"\ndefault = true\n'
        )
        path = os.path.join(d, "config.toml")
        os.makedirs(d, exist_ok=True)
        with open(path, "w") as f:
            f.write("".join(conf))
        s = self.start(name, [self.args.berth, "serve", "--config", path], f"http://127.0.0.1:{port}/v2/")
        s.url = f"http://127.0.0.1:{port}"
        s.metrics_url = f"http://127.0.0.1:{mport}/metrics"
        s.data = os.path.join(d, "data")
        return s

    def start_replicas(self, prefix):
        ports = [free_port() for _ in range(3)]
        peers = [f"http://127.0.0.1:{p}" for p in ports]
        reps = [
            self.start_berth(f"x3-{i}", prefix=prefix, cluster=(peers[i], peers), port=ports[i])
            for i in range(3)
        ]
        # Last first: reps[0] is the digest's last choice, so a single pull through it is a pull
        # through a replica that does not own the blob.
        order = owner_order(peers, self.digest)
        reps = [reps[i] for i in reversed(order)]
        # Bounded wait until each replica counts all three peers up (health probes).
        deadline = time.monotonic() + 30
        for r in reps:
            while metric(scrape(r), 'berth_cluster_peers{state="up"}') < 3:
                if time.monotonic() > deadline:
                    raise Failed(f"{r.name} does not see its 3 peers up within 30 s")
                time.sleep(0.1)
        return reps

    # -- registry over S3 --

    def start_registry(self, prefix):
        port = free_port()
        d = os.path.join(self.work, "registry")
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "config.yml")
        with open(conf, "w") as f:
            f.write(
                "version: 0.1\nlog: {level: info, formatter: text}\nstorage:\n"
                f"  s3: {{bucket: {BUCKET}, region: us-east-1, regionendpoint: '{self.rgw}', "
                f"accesskey: testkey, secretkey: testsecret, secure: false, v4auth: true, "
                f"rootdirectory: /{prefix}}}\n"
                # Served by the registry itself, as berth does (a redirect would send the client
                # to the bucket, which clients of a mirror usually cannot reach).
                "  redirect: {disable: true}\n"
                "  cache: {blobdescriptor: inmemory}\n"
                f"http: {{addr: 127.0.0.1:{port}}}\n"
                f"proxy: {{remoteurl: '{self.origin}'}}\n"
            )
        # The AWS SDK in docker-registry panics on AWS_CA_BUNDLE ("HTTPClient's transport
        # unsupported type"), set on some machines; RGW here is plain HTTP and needs none.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        s = self.start("registry", ["docker-registry", "serve", conf], f"http://127.0.0.1:{port}/v2/", env)
        s.url = f"http://127.0.0.1:{port}"
        s.key = f"{prefix}/docker/registry/v2/blobs/sha256/{self.digest[7:9]}/{self.digest[7:]}/data"
        return s

    # -- pulls --

    def pull(self, base):
        return self.pulls([base])[0]

    def pulls(self, bases):
        """One curl per base URL, all at once; each: ttfb, total (s), bytes."""
        procs = [
            subprocess.Popen(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total} %{size_download} %{http_code}", base + self.blob_path],
                stdout=subprocess.PIPE,
                text=True,
            )
            for base in bases
        ]
        out = []
        for p in procs:
            ttfb, total, size, code = p.communicate()[0].split()
            out.append({"ttfb": float(ttfb), "total": float(total), "bytes": int(size) if code == "200" else 0})
        return out

    def measured(self, fn, pids):
        """Runs fn; returns its result, wall seconds, the CPU seconds of `pids` and of ceph."""
        c0, g0 = cpu_seconds(pids), cpu_seconds(self.ceph_pids())
        t0 = time.monotonic()
        res = fn()
        wall = time.monotonic() - t0
        return res, wall, cpu_seconds(pids) - c0, cpu_seconds(self.ceph_pids()) - g0

    # -- figures --

    def sample(self, key, subject, value):
        self.S.setdefault((key, subject), []).append(value)

    def cold_single(self, subject):
        """One client, empty caches (and a fresh bucket prefix): total, TTFB, server CPU per GB."""
        prefix = self.fresh_prefix()
        srv = self.subject_servers(subject, prefix)
        before = self.origin_gets()
        got, _, cpu, _ = self.measured(lambda: self.pull(srv[0].url), [s.pid for s in srv])
        if got["bytes"] != self.size:
            raise Failed(f"{subject} cold pull got {got['bytes']} of {self.size} bytes")
        if self.origin_gets() - before != 1:
            log(f"WARNING: {subject} cold pull made {self.origin_gets() - before} upstream fetches")
        if subject == "x3" and metric(scrape(srv[0]), 'berth_owner_handoffs_total{result="peer"}') != 1:
            log("WARNING: the x3 cold pull was not handed to the owner (see owner_order)")
        self.sample("cold_s", subject, got["total"])
        self.sample("cold_ttfb_ms", subject, got["ttfb"] * 1000)
        self.sample("cold_cpu", subject, cpu / (self.size / 1e9))
        self.settle(subject, srv[:1], prefix)
        for s in srv:
            self.stop(s)
        if subject != "disk":
            self.drop_prefix(prefix)

    def subject_servers(self, subject, prefix):
        if subject == "disk":
            return [self.start_berth("disk")]
        if subject == "s3":
            return [self.start_berth("s3", prefix=prefix)]
        if subject == "x3":
            return self.start_replicas(prefix)
        return [self.start_registry(prefix)]

    def settle(self, subject, srv, prefix):
        """A fill's bucket upload runs beside the pull: let it land before the next figure. `srv`:
        the servers that answered a pull."""
        if subject != "registry":
            for s in srv:
                self.wait_local(s)
        if subject in ("s3", "x3"):
            self.wait_in_bucket(f"{prefix}/blobs/sha256/{self.digest[7:]}")
        elif subject == "registry":
            self.wait_in_bucket(srv[0].key)

    def wait_local(self, server):
        """The blob committed on this berth's disk (it is renamed into place after its last
        byte is verified), so the next pull is a local hit and not a follower of the fill."""
        path = os.path.join(server.data, "blobs", "sha256", self.digest[7:])
        deadline = time.monotonic() + 60
        while not (os.path.exists(path) and os.path.getsize(path) == self.size):
            if time.monotonic() > deadline:
                raise Failed(f"{server.name} did not commit the blob within 60 s")
            time.sleep(0.1)

    def cold_concurrent(self, subject):
        """32 clients at once against empty caches, spread round-robin over the subject's
        servers: wall, slowest TTFB, upstream fetches, short bodies, CPU."""
        prefix = self.fresh_prefix()
        srv = self.subject_servers(subject, prefix)
        before = self.origin_gets()
        bases = [srv[i % len(srv)].url for i in range(CONCURRENT)]
        got, wall, cpu, ceph = self.measured(lambda: self.pulls(bases), [s.pid for s in srv])
        short = sum(1 for g in got if g["bytes"] != self.size)
        if short:
            log(f"WARNING: {short} of {CONCURRENT} pulls from {subject} were incomplete")
        self.sample("conc_wall", subject, wall)
        self.sample("conc_ttfb", subject, max(g["ttfb"] for g in got) * 1000)
        self.sample("conc_fetches", subject, self.origin_gets() - before)
        self.sample("conc_short", subject, short)
        self.sample("conc_cpu", subject, cpu)
        if subject != "disk":
            self.sample("conc_ceph_cpu", subject, ceph)
        if subject != "registry":
            m = [scrape(s) for s in srv]
            fetched = sum(metric(t, "berth_upstream_fetched_bytes_total") for t in m)
            self.sample("conc_fetched", subject, fetched / self.size)
            self.R["conc_sources", subject] = " / ".join(
                str(int(sum(metric(t, f'berth_answers_total{{source="{src}"}}') for t in m)))
                for src in ("local", "bucket", "peer", "upstream")
            )
            handoffs = {
                r: int(sum(metric(t, f'berth_owner_handoffs_total{{result="{r}"}}') for t in m))
                for r in ("self", "peer", "fallback")
            }
            if subject == "x3":
                self.R["conc_handoffs", subject] = " / ".join(str(v) for v in handoffs.values())
        if subject == "registry":
            # docker-registry's proxy stores a blob from a second upstream GET in a goroutine
            # tied to the first client's request; under 32 clients it may never land.
            stored = self.in_bucket(srv[0].key, 30)
            self.sample("conc_stored", subject, "yes" if stored else "no")
            if not stored:
                log("registry did not store the blob after the 32 pulls; one more pull to store it")
                self.pull(srv[0].url)
        self.settle(subject, srv, prefix)
        if subject in ("s3", "x3"):
            self.sample("conc_stored", subject, "yes")
        return srv, prefix

    def hits(self, subject, srv, clients, key):
        """`clients` at once, `runs` times, of a blob the subject holds: GB/s and CPU s/GB of the
        server and of ceph, upstream fetches (should be none)."""
        before = self.origin_gets()
        pids = [s.pid for s in srv]
        wall = cpu = ceph = 0.0
        nbytes = 0
        for _ in range(self.runs):
            got, w, c, g = self.measured(lambda: self.pulls([srv[0].url] * clients), pids)
            wall, cpu, ceph = wall + w, cpu + c, ceph + g
            nbytes += sum(x["bytes"] for x in got)
        if nbytes != self.runs * clients * self.size:
            log(f"WARNING: {subject} {key} served {nbytes} of {self.runs * clients * self.size} bytes")
        self.record_hit(subject, key, nbytes, wall, cpu, ceph)
        self.R[f"{key}_fetches", subject] = str(self.origin_gets() - before)

    def record_hit(self, subject, key, nbytes, wall, cpu, ceph):
        gb = nbytes / 1e9
        self.R[f"{key}_gbps", subject] = f"{gb / wall:.2f}"
        self.R[f"{key}_cpu", subject] = f"{cpu / gb:.3f}"
        if subject != "disk":
            self.R[f"{key}_ceph", subject] = f"{ceph / gb:.3f}"

    def bucket_hits(self, prefix):
        """A berth with an empty disk over the bucket that holds the blob, `runs` times (a fresh
        disk each): the first pull is answered from the bucket."""
        before = self.origin_gets()
        wall = cpu = ceph = 0.0
        nbytes = 0
        ttfbs = []
        sources = 0
        for _ in range(self.runs):
            s = self.start_berth("s3", prefix=prefix)
            got, w, c, g = self.measured(lambda: self.pull(s.url), [s.pid])
            sources += metric(scrape(s), 'berth_answers_total{source="bucket"}')
            wall, cpu, ceph = wall + w, cpu + c, ceph + g
            nbytes += got["bytes"]
            ttfbs.append(got["ttfb"])
            self.stop(s)
        if nbytes != self.runs * self.size:
            log(f"WARNING: bucket hits served {nbytes} of {self.runs * self.size} bytes")
        if sources != self.runs:
            log(f"WARNING: {int(sources)} of {self.runs} bucket-hit pulls were answered from the bucket")
        self.record_hit("s3", "bucket1", nbytes, wall, cpu, ceph)
        self.R["bucket1_ttfb", "s3"] = f"{statistics.median(ttfbs) * 1000:.1f}"
        self.R["bucket1_fetches", "s3"] = str(self.origin_gets() - before)

        # The ceilings: the same object read straight from RGW by curl (a presigned GET), and
        # the blob from the origin (what a cold pull reads).
        url = self.s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": BUCKET, "Key": f"{prefix}/blobs/sha256/{self.digest[7:]}"},
            ExpiresIn=3600,
        )
        for key, source in (("rgw", url), ("origin", self.origin + self.blob_path)):
            wall = cpu = 0.0
            nbytes = 0
            pids = self.ceph_pids() if key == "rgw" else [self.origin_srv.pid]
            for _ in range(self.runs):
                t0, c0 = time.monotonic(), cpu_seconds(pids)
                out = subprocess.run(
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", source],
                    capture_output=True,
                    text=True,
                ).stdout
                wall += time.monotonic() - t0
                cpu += cpu_seconds(pids) - c0
                nbytes += int(out or 0)
            if nbytes != self.runs * self.size:
                log(f"WARNING: {key} direct served {nbytes} of {self.runs * self.size} bytes")
            self.R[f"{key}_gbps", "s3"] = f"{nbytes / 1e9 / wall:.2f}"
            self.R[f"{key}_cpu", "s3"] = f"{cpu / (nbytes / 1e9):.3f}"

    def run(self):
        load_before = open("/proc/loadavg").read().split()[:3]
        self.start_ceph()
        with open(os.path.join(self.work, "cluster-secret"), "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        self.cluster_secret = os.path.join(self.work, "cluster-secret")
        self.start_origin()
        log(f"blob {self.blob_mib} MiB, {self.runs} round(s)")

        # Rounds interleave the subjects, so that a change in the machine's load (it is shared)
        # falls on each of them alike; each figure is the median over rounds.
        subjects = ("disk", "s3", "x3", "registry")
        for r in range(self.runs):
            log(f"round {r + 1}/{self.runs}: a cold pull, 1 client, from each subject")
            for subject in subjects:
                self.cold_single(subject)
        for r in range(self.runs):
            last = r == self.runs - 1
            for subject in subjects:
                log(f"round {r + 1}/{self.runs}: {subject}: {CONCURRENT} concurrent cold pulls")
                srv, prefix = self.cold_concurrent(subject)
                if last and subject == "x3":
                    for s in srv:
                        self.stop(s)
                    log(f"s3: hit from the bucket (empty disk) x{self.runs}; RGW and origin read by curl")
                    self.bucket_hits(prefix)
                elif last:
                    for clients in (1, 8):
                        log(f"{subject}: warm pulls, {clients} client(s) x{self.runs}")
                        self.hits(subject, srv, clients, f"hit{clients}")
                for s in srv:
                    if s in self.servers:
                        self.stop(s)
                if subject != "disk":
                    self.drop_prefix(prefix)
        self.summarize()
        self.load = (load_before, open("/proc/loadavg").read().split()[:3])

    def summarize(self):
        """Samples to reported values: the median of the rounds for times and CPU; for counts,
        the worst round, with every round's count when they differ."""
        fmt = {"cold_s": "{:.3f}", "cold_ttfb_ms": "{:.1f}", "cold_cpu": "{:.3f}", "conc_wall": "{:.3f}",
               "conc_ttfb": "{:.1f}", "conc_cpu": "{:.2f}", "conc_ceph_cpu": "{:.2f}"}
        for (key, subject), vals in self.S.items():
            if key in fmt:
                self.R[key, subject] = fmt[key].format(statistics.median(vals))
            elif key == "conc_stored":
                self.R[key, subject] = "yes" if all(v == "yes" for v in vals) else " / ".join(vals)
            else:
                worst = max(vals)
                text = f"{worst:.2f}" if isinstance(worst, float) else str(worst)
                if len(set(vals)) > 1:
                    text += " (" + ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in vals) + ")"
                self.R[key, subject] = text

    # -- report --

    def report(self):
        subjects = ["disk", "s3", "x3", "registry"]
        heads = ["berth 1 replica (disk)", "berth 1 replica + RGW", "berth 3 replicas + RGW", "registry proxy + S3 (RGW)"]

        def ratio(a, b):
            try:
                a, b = float(a), float(b)
            except (TypeError, ValueError):
                return "–"
            return f"{a / b:.2f}" if a and b else "–"

        def row(label, key, ratios=True):
            vals = [self.R.get((key, s), "–") for s in subjects]
            r = [ratio(vals[2], vals[0]), ratio(vals[2], vals[3]), ratio(vals[1], vals[0])] if ratios else ["–"] * 3
            return f"| {label} | " + " | ".join(vals + r) + " |"

        cpu_model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
            "?",
        )
        mem = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.splitlines()[1].split()[1]
        commit = git("rev-parse", "--short", "HEAD")
        src = git("log", "-1", "--no-merges", "--format=%h", "--", "src", "Cargo.lock")
        lines = [
            f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}, HEAD {commit} (berth sources at {src}), "
            f"{os.cpu_count()} cores ({cpu_model}), {mem} GiB, blob {self.blob_mib} MiB, {self.runs} round(s) "
            f"interleaving the subjects (cold rows: median over rounds, counts: the worst round, each round's "
            f"when they differ; answers and hand-offs: the last round; warm and bucket-hit rows: all bytes / "
            f"summed wall of {self.runs} pull(s)){', --quick' if self.quick else ''}. "
            f"Load average before: {' '.join(self.load[0])}, after: {' '.join(self.load[1])}.",
            "",
            "| figure | " + " | ".join(heads) + " | 3 replicas / 1 replica | 3 replicas / registry | 1+RGW / 1 replica |",
            "|---" * 8 + "|",
            row(f"{CONCURRENT} cold pulls: wall s", "conc_wall"),
            row(f"{CONCURRENT} cold pulls: slowest TTFB ms", "conc_ttfb"),
            row(f"{CONCURRENT} cold pulls: upstream fetches (origin log GETs)", "conc_fetches"),
            row(f"{CONCURRENT} cold pulls: upstream bytes / blob size (berth metrics)", "conc_fetched"),
            row(f"{CONCURRENT} cold pulls: incomplete bodies", "conc_short", ratios=False),
            row(f"{CONCURRENT} cold pulls: answers local / bucket / peer / upstream", "conc_sources", ratios=False),
            row(f"{CONCURRENT} cold pulls: owner hand-offs self / peer / fallback", "conc_handoffs", ratios=False),
            row(f"{CONCURRENT} cold pulls: blob stored in the bucket", "conc_stored", ratios=False),
            row(f"{CONCURRENT} cold pulls: server CPU s (all replicas)", "conc_cpu"),
            row(f"{CONCURRENT} cold pulls: ceph CPU s (mon + osd + rgw)", "conc_ceph_cpu"),
            row("cold pull, 1 client (3 replicas: through a non-owner): total s", "cold_s"),
            row("cold pull, 1 client: TTFB ms", "cold_ttfb_ms"),
            row("cold pull, 1 client: server CPU s/GB (all replicas)", "cold_cpu"),
            row("warm, local disk, 1 client: GB/s", "hit1_gbps"),
            row("warm, local disk, 1 client: server CPU s/GB", "hit1_cpu"),
            row("warm, local disk, 8 clients: GB/s", "hit8_gbps"),
            row("warm, local disk, 8 clients: server CPU s/GB", "hit8_cpu"),
            row("warm runs: upstream fetches", "hit1_fetches", ratios=False),
            row("warm, bucket: ceph CPU s/GB (1 client)", "hit1_ceph"),
            row("hit from the bucket (empty disk), 1 client: GB/s", "bucket1_gbps"),
            row("hit from the bucket, 1 client: TTFB ms", "bucket1_ttfb"),
            row("hit from the bucket, 1 client: server CPU s/GB", "bucket1_cpu"),
            row("hit from the bucket, 1 client: ceph CPU s/GB", "bucket1_ceph"),
            row("hit from the bucket runs: upstream fetches", "bucket1_fetches", ratios=False),
            row("RGW direct (curl, presigned GET of berth's object), 1 client: GB/s", "rgw_gbps"),
            row("RGW direct, 1 client: ceph CPU s/GB", "rgw_cpu"),
            row("origin direct (curl of the blob, what a cold pull reads), 1 client: GB/s", "origin_gbps"),
            row("origin direct, 1 client: origin CPU s/GB", "origin_cpu"),
            "",
            "The registry has no local disk tier: its warm rows are reads from the bucket (RGW). "
            "\"hit from the bucket\" is a berth over the bucket with an empty disk (1 replica + RGW column), "
            "restarted empty before each run; its first pull streams the object from RGW into the local disk "
            "while answering. CPU is utime+stime from /proc/<pid>/stat before and after (berth: every replica; "
            "ceph: its mon, osd and radosgw).",
        ]
        text = "\n".join(lines) + "\n"
        write_report(self.args.out, text)


def scrape(server):
    return urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()


def owner_order(peers, digest):
    """Indexes of `peers` in berth's preference order for `digest` (src/cluster/ring.rs, a fixed
    protocol: weight = first 8 bytes, big-endian, of sha256(peer_id "\n" digest); highest first,
    ties to the smaller id)."""

    def weight(peer):
        return int.from_bytes(hashlib.sha256(f"{peer}\n{digest}".encode()).digest()[:8], "big")

    return sorted(range(len(peers)), key=lambda i: (-weight(peers[i]), peers[i]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB blob, one run per figure")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches/load/last-cluster-run.md"))
    ap.add_argument("--berth", help="a berth binary (default: cargo build --release, target/release/berth)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--rgw-port", type=int, default=19303)
    ap.add_argument("--mon-port", type=int, default=13500)
    args = ap.parse_args()
    ensure_deps()
    args.berth = berth_binary(args.berth)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    return run(Bench(args))


if __name__ == "__main__":
    sys.exit(main())
