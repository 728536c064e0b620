"""What the whole-server harnesses of benches/load/ share: logging, the failure type, Debian
packages installed on demand, reading a Prometheus text page, the berth binary to measure, the
report written and printed, and the run/report/cleanup frame of `main`. Imported by cluster.py,
bucket_path.py, fleet.py and fleet_owner.py (each puts this directory on sys.path first); not a
harness itself.
"""

import os
import re
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


def apt_install(packages):
    """Installs the Debian packages of `packages` that are missing (as root; else says which)."""
    missing = [
        p
        for p in packages
        if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout
        != "install ok installed"
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise Failed(f"missing {' '.join(missing)}; run as root to apt-get install them")
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def metric(text, name):
    """The sum of every sample whose name is `name`'s and whose labels include the ones `name`
    gives (`berth_bucket_requests_total{op="get"}`); without labels, every sample of the name."""
    base, _, labels = name.partition("{")
    labels = labels.rstrip("}")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(base):
            continue
        m = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != base:
            continue
        have = m.group(2) or ""
        if labels and not all(lbl in have.split(",") for lbl in labels.split(",")):
            continue
        total += float(m.group(3))
    return total


def registry_config(conf, data, addr):
    """Writes the Distribution registry's config to `conf`: blobs under `data`, serving `addr`."""
    with open(conf, "w") as f:
        f.write(
            "version: 0.1\nlog: {level: info, formatter: text}\n"
            f"storage:\n  filesystem: {{rootdirectory: {data}}}\n"
            "  cache: {blobdescriptor: inmemory}\n"
            f"http: {{addr: '{addr}'}}\n"
        )


def write_report(path, text):
    """Writes a run's report to `path` (its directory made if need be) and prints it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(text)
    log(f"table written to {path}")


def git(*args):
    r = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def berth_binary(given):
    """The berth to measure: `given`, else a release build of this checkout."""
    if given:
        return os.path.abspath(given)
    log("building berth (release)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "berth"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/berth")


def run(bench):
    """Runs `bench` (its `run`, then `report`), always cleaning up after it; the exit status."""
    try:
        bench.run()
        bench.report()
    except Failed as e:
        log(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.cleanup()
    return 0
