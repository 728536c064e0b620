#!/usr/bin/env python3
"""The replica data paths of issue 19, measured as ratios in one run: a hit from the bucket with an
empty disk against a direct presigned GET of the same object, eight clients of one fresh blob from
the bucket, and a cold pull through a replica that does not own the digest against one through a
single berth. Built on benches/load/cluster.py's servers (Ceph RGW, the Distribution registry as
origin, berth in release), the same machine, the same blob.

Figures (each the median of --rounds interleaved rounds unless said):
  bucket1    a berth with an empty disk over the bucket holding the blob, 1 client: GB/s, berth
             CPU s/GB, RGW CPU s/GB; against `curl` of a presigned GET of the same object (RGW
             direct: the ceiling)
  bucket8    the same, 8 clients of the fresh blob at once: wall against bucket1's wall, bucket
             GETs made (target: one), every client's body complete (curl checks nothing; berth
             verifies before the last byte, so a complete 200 is a verified body)
  cold       one cold pull through a single berth over the bucket (s3) and through the replica of
             three that owns the digest last (x3): seconds, CPU summed over the replicas
  to_bucket  after the cold s3 pull: seconds from the pull's start until the blob is in the bucket,
             and berth's CPU over that time (the fill and its upload)
  budget     every process on a path (berth, RGW, the origin registry, the curl clients): their CPU
             summed, and the wall it allows at best on this machine's cores (all of it spread over
             every core). From those, for each wall target of issue 19, the berth CPU s/GB that
             would leave the target reachable here at all: the cores' time within the target's
             wall, less what the other processes on the path spend. A target whose budget is
             below what berth's floor (sha256 and one copy each way) costs cannot be met on this
             machine by any berth.

Usage: python3 benches/load/bucket_path.py [--quick] [--rounds N] [--only bucket1] [--perf DIR]
                                          [--berth BIN] [--before BIN]
  --before BIN a second binary (say, main's), measured beside --berth figure by figure: the
               "before" and "after" columns of one run
  --stream-cap MBYTE
               put benches/load/stream_cap.py in front of RGW, capping each connection's download
               at MBYTE MB/s (a remote S3's single stream): berth's bucket and the direct GET go
               through it (the cold and to-bucket figures too)
  --read-streams N, --before-read-streams N
               `[storage.s3] read_streams` of each column's berths (default 1, left out of the
               config); the same binary twice with two values compares them
  --perf DIR   record `perf record -g` of the berth serving bucket1 and bucket8 and of the x3
               replicas in the cold pull (first round) into DIR (read with `perf report -i`;
               frame pointers make the stacks whole: build with
               RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only);
               with BENCH_PERF_STAT=<events>, `perf stat -e <events>` counts instead
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
from cluster import scrape  # noqa: E402
from common import ROOT, Failed, berth_binary, git, log, metric, run, write_report  # noqa: E402


def children_cpu():
    """User + system CPU seconds of this process's children that were waited for (the clients)."""
    t = os.times()
    return t.children_user + t.children_system


def peak_rss_mib(pid):
    """A process's peak resident memory (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PathBench(cluster.Bench):
    def __init__(self, args):
        super().__init__(args)
        self.runs = args.rounds
        self.samples = {}
        self.bins = {"after": args.berth}
        if args.before:
            self.bins["before"] = args.before
        self.label = "after"

    def add(self, key, value):
        self.samples.setdefault((self.label, key), []).append(value)

    def use(self, label):
        """Runs the next figures with this subject's binary (`after`: --berth, `before`: --before)
        and its `read_streams`."""
        self.label = label
        self.args.berth = self.bins[label]
        streams = self.args.read_streams if label == "after" else self.args.before_read_streams
        self.s3_extra = f"read_streams = {streams}\n" if streams > 1 else ""

    def perf_start(self, name, pids):
        if not self.args.perf:
            return None
        os.makedirs(self.args.perf, exist_ok=True)
        name = f"{self.label}-{name}"
        out = os.path.join(self.args.perf, f"{name}.data")
        what = ["record", "-g", "-F", "999"]
        if os.environ.get("BENCH_PERF_STAT"):
            # Syscall and context-switch counts instead of a profile.
            out = os.path.join(self.args.perf, f"{name}.stat")
            what = ["stat", "-e", os.environ["BENCH_PERF_STAT"]]
        p = subprocess.Popen(
            ["perf", *what, "-o", out, "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf attaches asynchronously; a profile, not a figure, depends on it
        return p

    def perf_stop(self, p):
        if p:
            p.send_signal(2)
            p.wait()

    def start_ceph(self):
        super().start_ceph()
        if not self.args.stream_cap:
            return
        port = cluster.free_port()
        relay = self.start(
            "stream-cap",
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "stream_cap.py"),
             "--listen", str(port), "--to", self.rgw[len("http://"):], "--mbyte-per-s", str(self.args.stream_cap)],
            f"http://127.0.0.1:{port}/",
        )
        log(f"each bucket connection capped at {self.args.stream_cap} MB/s (relay pid {relay.pid})")
        self.rgw = f"http://127.0.0.1:{port}"
        self.s3 = cluster.s3_client(self.rgw)

    def measured_all(self, fn, pids):
        """`measured`, plus the CPU seconds of the origin registry and of the clients (curl,
        children of this process, counted once they were waited for)."""
        o0, k0 = cluster.cpu_seconds([self.origin_srv.pid]), children_cpu()
        res, wall, cpu, ceph = self.measured(fn, pids)
        return res, wall, cpu, ceph, cluster.cpu_seconds([self.origin_srv.pid]) - o0, children_cpu() - k0

    def seed_bucket(self):
        """A prefix whose bucket holds the blob (a cold pull through one berth, then settled)."""
        prefix = self.fresh_prefix()
        s = self.start_berth("seed", prefix=prefix)
        got = self.pull(s.url)
        if got["bytes"] != self.size:
            raise Failed("seed pull incomplete")
        self.settle("s3", [s], prefix)
        self.stop(s)
        return prefix

    def bucket_hit(self, prefix, clients, profile):
        s = self.start_berth("s3", prefix=prefix)
        gets0 = metric(scrape(s), 'berth_bucket_requests_total{op="get"}')
        perf = self.perf_start(f"bucket{clients}", [s.pid]) if profile else None
        got, wall, cpu, ceph, _, curl = self.measured_all(lambda: self.pulls([s.url] * clients), [s.pid])
        self.perf_stop(perf)
        short = sum(1 for g in got if g["bytes"] != self.size)
        if short:
            raise Failed(f"bucket hit x{clients}: {short} incomplete bodies")
        gets = metric(scrape(s), 'berth_bucket_requests_total{op="get"}') - gets0
        from_bucket = metric(scrape(s), 'berth_answers_total{source="bucket"}')
        self.add(f"bucket{clients}_hwm_mib", peak_rss_mib(s.pid))
        self.stop(s)
        gb = self.size / 1e9
        self.add(f"bucket{clients}_wall", wall)
        self.add(f"bucket{clients}_gbps", gb * clients / wall)
        self.add(f"bucket{clients}_cpu", cpu / gb)
        self.add(f"bucket{clients}_ceph", ceph / gb)
        self.add(f"bucket{clients}_curl", curl / gb)
        self.add(f"bucket{clients}_gets", gets)
        self.add(f"bucket{clients}_answers", from_bucket)
        self.add(f"bucket{clients}_ttfb_ms", statistics.median(g["ttfb"] for g in got) * 1000)

    def rgw_direct(self, prefix):
        url = self.s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": cluster.BUCKET, "Key": f"{prefix}/blobs/sha256/{self.digest[7:]}"},
            ExpiresIn=3600,
        )
        pids = self.ceph_pids()
        c0, k0, t0 = cluster.cpu_seconds(pids), children_cpu(), time.monotonic()
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url], capture_output=True, text=True
        ).stdout
        wall = time.monotonic() - t0
        if int(out or 0) != self.size:
            raise Failed("RGW direct read incomplete")
        self.add("rgw_gbps", self.size / 1e9 / wall)
        self.add("rgw_ceph", (cluster.cpu_seconds(pids) - c0) / (self.size / 1e9))
        self.add("rgw_curl", (children_cpu() - k0) / (self.size / 1e9))

    def cold(self, subject, profile):
        prefix = self.fresh_prefix()
        srv = self.subject_servers(subject, prefix)
        before = self.origin_gets()
        perf = self.perf_start(f"cold-{subject}", [s.pid for s in srv]) if profile else None
        t0, cpu0 = time.monotonic(), cluster.cpu_seconds([s.pid for s in srv])
        got, _, cpu, ceph, origin, curl = self.measured_all(lambda: self.pull(srv[0].url), [s.pid for s in srv])
        self.perf_stop(perf)
        if got["bytes"] != self.size:
            raise Failed(f"{subject} cold pull incomplete")
        self.add(f"cold_{subject}_ceph", ceph / (self.size / 1e9))
        self.add(f"cold_{subject}_origin", origin / (self.size / 1e9))
        self.add(f"cold_{subject}_curl", curl / (self.size / 1e9))
        if self.origin_gets() - before != 1:
            log(f"WARNING: {subject} cold pull made {self.origin_gets() - before} upstream fetches")
        if subject == "x3" and metric(scrape(srv[0]), 'berth_owner_handoffs_total{result="peer"}') != 1:
            log("WARNING: the x3 cold pull was not handed to the owner")
        self.add(f"cold_{subject}_s", got["total"])
        self.add(f"cold_{subject}_cpu", cpu / (self.size / 1e9))
        if subject == "s3":
            self.wait_in_bucket(f"{prefix}/blobs/sha256/{self.digest[7:]}")
            self.add("to_bucket_s", time.monotonic() - t0)
            # berth's CPU for the whole of it: the fill and the upload after it.
            self.add("to_bucket_cpu", (cluster.cpu_seconds([srv[0].pid]) - cpu0) / (self.size / 1e9))
        self.settle(subject, srv[:1], prefix)
        for s in srv:
            self.stop(s)
        self.drop_prefix(prefix)

    def run(self):
        self.start_ceph()
        with open(os.path.join(self.work, "cluster-secret"), "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        self.cluster_secret = os.path.join(self.work, "cluster-secret")
        self.start_origin()
        self.use("after")
        prefix = self.seed_bucket()
        for r in range(self.runs):
            first = r == 0
            log(f"round {r + 1}/{self.runs}")
            # Subjects interleave figure by figure, so the shared machine's load falls on both.
            for label in self.bins:
                self.use(label)
                self.bucket_hit(prefix, 1, first)
                self.rgw_direct(prefix)
            if self.args.only == "bucket1":
                continue
            for label in self.bins:
                self.use(label)
                self.bucket_hit(prefix, 8, first)
            for label in self.bins:
                self.use(label)
                self.cold("s3", False)
            for label in self.bins:
                self.use(label)
                self.cold("x3", first)

    def report(self):
        labels = list(self.bins)
        cols = {label: self.column(label) for label in labels}
        names = [name for name, _ in cols[labels[0]]]
        head = (
            f"Run {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, HEAD {git('rev-parse', '--short', 'HEAD')}, "
            f"blob {self.blob_mib} MiB, {self.runs} round(s) interleaving {' and '.join(labels)}, "
            f"load {open('/proc/loadavg').read().split()[:3]}"
        )
        if self.args.stream_cap:
            head += f"\nbucket connections capped at {self.args.stream_cap} MB/s each (stream_cap.py)"
        for label in labels:
            streams = self.args.read_streams if label == "after" else self.args.before_read_streams
            head += f"\n{label}: {self.bins[label]}, read_streams {streams}"
        text = head + "\n\n| figure | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n"
        for i, name in enumerate(names):
            text += f"| {name} | " + " | ".join(cols[label][i][1] for label in labels) + " |\n"
        write_report(self.args.out, text)

    def column(self, label):
        nan = float("nan")
        med = {k: statistics.median(v) for (lbl, k), v in self.samples.items() if lbl == label}
        worst = {k: max(v) for (lbl, k), v in self.samples.items() if lbl == label}

        def m(key):
            return med.get(key, nan)

        return [
            ("hit from the bucket, 1 client: GB/s", f"{m('bucket1_gbps'):.2f}"),
            ("RGW direct (presigned GET, curl): GB/s", f"{m('rgw_gbps'):.2f}"),
            ("bucket hit / RGW direct", f"{m('bucket1_gbps') / m('rgw_gbps'):.2f}x"),
            ("hit from the bucket, 1 client: berth CPU s/GB", f"{m('bucket1_cpu'):.3f}"),
            ("hit from the bucket, 1 client: RGW CPU s/GB", f"{m('bucket1_ceph'):.3f}"),
            ("RGW direct: RGW CPU s/GB", f"{m('rgw_ceph'):.3f}"),
            ("hit from the bucket, 1 client: TTFB ms", f"{m('bucket1_ttfb_ms'):.1f}"),
            ("hit from the bucket, 1 client: berth peak RSS MiB", f"{m('bucket1_hwm_mib'):.1f}"),
            ("hit from the bucket, 8 clients: wall / 1 client's", f"{m('bucket8_wall') / m('bucket1_wall'):.2f}x"),
            ("hit from the bucket, 8 clients: bucket GETs (worst round)", f"{worst.get('bucket8_gets', nan):.0f}"),
            ("hit from the bucket, 8 clients: berth CPU s/GB served", f"{m('bucket8_cpu') / 8:.3f}"),
            ("hit from the bucket, 8 clients: berth peak RSS MiB", f"{m('bucket8_hwm_mib'):.1f}"),
            ("cold pull, single berth + RGW: s", f"{m('cold_s3_s'):.3f}"),
            ("cold pull through a non-owner (x3): s", f"{m('cold_x3_s'):.3f}"),
            ("non-owner / single", f"{m('cold_x3_s') / m('cold_s3_s'):.2f}x"),
            ("cold pull CPU s/GB: single", f"{m('cold_s3_cpu'):.2f}"),
            ("cold pull CPU s/GB: x3 summed over replicas", f"{m('cold_x3_cpu'):.2f}"),
            ("cold pull, single berth: RGW CPU s/GB during the pull", f"{m('cold_s3_ceph'):.2f}"),
            ("first pull to in the bucket: s", f"{m('to_bucket_s'):.2f}"),
            ("first pull to in the bucket: berth CPU s/GB (fill + upload)", f"{m('to_bucket_cpu'):.2f}"),
            *self.budget(m),
        ]

    def budget(self, m):
        """What the wall targets leave berth, given what the rest of each path spends (see the
        docstring's `budget`). Figures per GB of blob; `cores` from this machine."""
        cores = os.cpu_count()
        gb = self.size / 1e9
        # The 1-client bucket hit: the target wall is RGW direct's / 0.8.
        direct_wall = gb / m("rgw_gbps")
        hit_others = m("bucket1_ceph") + m("bucket1_curl")
        hit_all = hit_others + m("bucket1_cpu")
        hit_budget = cores * direct_wall / 0.8 / gb - hit_others
        # 8 clients: within 1.2x of one client's wall.
        fan_others = m("bucket8_ceph") + m("bucket8_curl")
        fan_budget = cores * 1.2 * m("bucket1_wall") / gb - fan_others
        # The non-owner cold pull: within 1.3x of the single berth's.
        x3_others = m("cold_x3_ceph") + m("cold_x3_origin") + m("cold_x3_curl")
        x3_budget = cores * 1.3 * m("cold_s3_s") / gb - x3_others
        return [
            ("budget: RGW direct, CPU of RGW + curl, s/GB", f"{m('rgw_ceph') + m('rgw_curl'):.2f}"),
            ("budget: bucket hit, CPU of berth + RGW + curl, s/GB", f"{hit_all:.2f}"),
            ("budget: bucket hit, wall at best on all cores / measured", f"{hit_all * gb / cores / m('bucket1_wall'):.2f}"),
            ("budget: berth CPU s/GB that 0.8x of RGW direct leaves (now above)", f"{hit_budget:.2f}"),
            ("budget: 8 clients, CPU of RGW + 8 curls, s/GB of blob", f"{fan_others:.2f}"),
            ("budget: berth CPU s/GB of blob that 1.2x leaves (now: 8x the served row)", f"{fan_budget:.2f}"),
            ("budget: x3 cold, CPU of RGW + origin + curl, s/GB", f"{x3_others:.2f}"),
            ("budget: replicas' summed CPU s/GB that 1.3x leaves (now: x3 summed)", f"{x3_budget:.2f}"),
        ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB blob")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["bucket1"], help="only the 1-client bucket hit and RGW direct (quick iterations)")
    ap.add_argument("--perf", help="record perf profiles into this directory")
    ap.add_argument("--stream-cap", type=float, help="cap each bucket connection at this many MB/s (a relay)")
    ap.add_argument("--read-streams", type=int, default=1, help="[storage.s3] read_streams of --berth")
    ap.add_argument("--before-read-streams", type=int, default=1, help="[storage.s3] read_streams of --before")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches/load/last-bucket-path-run.md"))
    ap.add_argument("--berth", help="a berth binary (default: cargo build --release)")
    ap.add_argument("--before", help="a second berth binary, measured in the same run, interleaved (a 'before' column)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--rgw-port", type=int, default=19303)
    ap.add_argument("--mon-port", type=int, default=13500)
    args = ap.parse_args()
    cluster.ensure_deps()
    args.berth = berth_binary(args.berth)
    return run(PathBench(args))


if __name__ == "__main__":
    sys.exit(main())
