#!/usr/bin/env python3
"""What a signature-policy verdict adds to a cached manifest answer (issue 18: "at most 1 ms").

Design question: once a manifest is cached and its signature verified, does answering it through a
scope a `[[policy]]` covers (the policy lookup, the kept verdict, the count, the names it lets
through) cost a client noticeably more than the same answer outside any policy?

One real `berth serve` (release build), one upstream (the Distribution registry, `docker-registry`)
holding one image under two repositories: `signed/app`, which the policy covers and whose cosign
tag-scheme signature (made with `openssl dgst -sha256 -sign` over the simple-signing payload)
verifies under the policy's key, and `open/app`, outside the policy. Same bytes, same digest,
same berth, so the only difference between the two answers is the verdict path. After one warming
GET of each, `ab -k -c 1` sends N keep-alive GETs of one URL (by tag, or by digest, `Accept` naming
the OCI manifest); the four URLs take turns, round after round, so drift of the shared machine hits
them alike. Per URL and round: ab's mean time per request, and berth's CPU time (utime + stime from
/proc) per request. Per round, the difference covered minus open (paired: adjacent runs); reported:
the median over rounds and the spread (min..max). Each covered run must add N to
berth_policy_verdicts_total{verdict="verified"} (every request went through the verdict), each open
run none.

Usage: benches/load/policy_verdict.py [--berth target/release/berth] [--requests 20000] [--rounds 7]
Needs docker-registry, ab (apache2-utils) and openssl; build berth first (cargo build --release).
Everything runs on loopback in a temp dir, removed at the end (KEEP_WORK=1 keeps it).
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
TAG = "v1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def http(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def wait_http(url, proc, what):
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early ({proc.returncode})")
        try:
            if http("GET", url)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{what} not answering {url} after 30 s")
        time.sleep(0.05)


def push_blob(registry, repo, media_type, data):
    status, headers, _ = http("POST", f"http://{registry}/v2/{repo}/blobs/uploads/", b"")
    assert status == 202, status
    location = headers["Location"]
    sep = "&" if "?" in location else "?"
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    d = digest(data)
    http("PUT", f"{location}{sep}digest={d}", data,
         {"Content-Type": "application/octet-stream"})
    return {"mediaType": media_type, "digest": d, "size": len(data)}


def push_manifest(registry, repo, reference, manifest):
    body = json.dumps(manifest, separators=(",", ":")).encode()
    status, _, _ = http("PUT", f"http://{registry}/v2/{repo}/manifests/{reference}", body,
                        {"Content-Type": manifest["mediaType"]})
    assert status == 201, status
    return digest(body)


def push_image(registry, repo):
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    # Never unpacked here: any fixed bytes will do.
    layer = hashlib.sha256(b"berth").digest() * 32
    c = push_blob(registry, repo, OCI_CONFIG, config)
    l = push_blob(registry, repo, OCI_LAYER, layer)
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": c, "layers": [l]}
    return push_manifest(registry, repo, TAG, m)


def push_signature(registry, repo, subject, key, work):
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": f"bench/{repo}"},
                     "image": {"docker-manifest-digest": subject},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()
    path = os.path.join(work, "payload.json")
    with open(path, "wb") as f:
        f.write(payload)
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key, path],
                         check=True, capture_output=True).stdout
    c = push_blob(registry, repo, OCI_CONFIG, b"{}")
    l = push_blob(registry, repo, SIMPLE_SIGNING, payload)
    l["annotations"] = {"dev.cosignproject.cosign/signature": base64.b64encode(sig).decode()}
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": c, "layers": [l]}
    push_manifest(registry, repo, subject.replace(":", "-") + ".sig", m)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def verified(metrics):
    _, _, body = http("GET", f"http://{metrics}/metrics")
    for line in body.decode().splitlines():
        if line.startswith('berth_policy_verdicts_total{policy="bench",verdict="verified"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def ab(url, n):
    out = subprocess.run(["ab", "-q", "-k", "-c", "1", "-n", str(n), "-H", f"Accept: {OCI_MANIFEST}",
                          url], check=True, capture_output=True, text=True).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if failed or non2xx:
        sys.exit(f"ab {url}: failed {failed}, non-2xx {non2xx and non2xx.group(1)}\n{out}")
    return float(re.search(r"Time per request:\s+([\d.]+) \[ms\] \(mean\)", out).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--berth", default="target/release/berth")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    for tool in ("docker-registry", "ab", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (tests/install-deps.sh installs it)")
    if not os.access(args.berth, os.X_OK):
        sys.exit(f"no berth at {args.berth}: cargo build --release first")

    work = tempfile.mkdtemp(prefix="berth-verdict-")
    procs = []
    try:
        key, pub = os.path.join(work, "bench.key"), os.path.join(work, "bench.pub")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", key], check=True)
        subprocess.run(["openssl", "pkey", "-pubout", "-in", key, "-out", pub], check=True)

        registry = f"127.0.0.1:{free_port()}"
        with open(os.path.join(work, "registry.yml"), "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {work}/registry\n"
                    f"http:\n  addr: {registry}\n")
        log = open(os.path.join(work, "registry.log"), "w")
        procs.append(subprocess.Popen(["docker-registry", "serve", f"{work}/registry.yml"],
                                      stdout=log, stderr=log))
        wait_http(f"http://{registry}/v2/", procs[-1], "docker-registry")
        subject = push_image(registry, "signed/app")
        assert push_image(registry, "open/app") == subject
        push_signature(registry, "signed/app", subject, key, work)

        port, metrics = free_port(), f"127.0.0.1:{free_port()}"
        with open(os.path.join(work, "berth.toml"), "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n\n[metrics]\nlisten = "{metrics}"\n\n'
                    f'[storage]\npath = "{work}/berth"\n\n'
                    f'[[upstream]]\nname = "origin"\nurl = "http://{registry}"\ndefault = true\n'
                    f'tag_ttl = "1h"\n\n'
                    f'[[policy]]\nname = "bench"\nupstreams = ["origin"]\n'
                    f'repositories = ["signed/*"]\nkeys = ["{pub}"]\n')
        log = open(os.path.join(work, "berth.log"), "w")
        env = dict(os.environ, RUST_LOG="warn")
        berth = subprocess.Popen([args.berth, "serve", "--config", f"{work}/berth.toml"],
                                 stdout=log, stderr=log, env=env)
        procs.append(berth)
        wait_http(f"http://{metrics}/healthz", berth, "berth")

        base = f"http://127.0.0.1:{port}/v2"
        urls = {}
        for repo in ("signed/app", "open/app"):
            for ref in (TAG, subject):
                url = f"{base}/{repo}/manifests/{ref}"
                status, headers, body = http("GET", url, None, {"Accept": OCI_MANIFEST})
                assert status == 200 and digest(body) == subject, (url, status)
                kind = "tag" if ref == TAG else "digest"
                urls[(kind, repo.split("/")[0])] = url
        if verified(metrics) < 2:
            sys.exit("the signed image was not verified: see berth.log in " + work)

        n = args.requests
        rows = {k: {"ms": [], "cpu_us": []} for k in urls}
        diffs = {kind: {"ms": [], "cpu_us": []} for kind in ("tag", "digest")}
        for r in range(args.rounds):
            for kind in ("tag", "digest"):
                got = {}
                # Alternate which goes first, so neither always follows the other.
                order = ("open", "signed") if r % 2 == 0 else ("signed", "open")
                for scope in order:
                    before_v, before_cpu = verified(metrics), cpu_seconds(berth.pid)
                    ms = ab(urls[(kind, scope)], n)
                    cpu_us = (cpu_seconds(berth.pid) - before_cpu) / n * 1e6
                    counted = verified(metrics) - before_v
                    want = n if scope == "signed" else 0
                    if counted != want:
                        sys.exit(f"{kind}/{scope}: {counted} verdicts counted, want {want}")
                    rows[(kind, scope)]["ms"].append(ms)
                    rows[(kind, scope)]["cpu_us"].append(cpu_us)
                    got[scope] = (ms, cpu_us)
                diffs[kind]["ms"].append(got["signed"][0] - got["open"][0])
                diffs[kind]["cpu_us"].append(got["signed"][1] - got["open"][1])
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        def span(xs, f="{:.1f}"):
            return f"{f.format(statistics.median(xs))} ({f.format(min(xs))} .. {f.format(max(xs))})"

        print(f"{args.rounds} rounds x {n} keep-alive GETs per URL (ab -k -c 1); "
              "median over rounds (min .. max)\n")
        print("| URL | scope | time per request, us | berth CPU per request, us |")
        print("|---|---|---|---|")
        for kind, scope in [(k, s) for k in ("tag", "digest") for s in ("open", "signed")]:
            v = rows[(kind, scope)]
            us = [x * 1000 for x in v["ms"]]
            label = "covered, verified" if scope == "signed" else "no policy"
            print(f"| manifest by {kind} | {label} | {span(us)} | {span(v['cpu_us'])} |")
        print("\n| URL | verdict adds, time per request, us | verdict adds, berth CPU, us |")
        print("|---|---|---|")
        for kind, v in diffs.items():
            us = [x * 1000 for x in v["ms"]]
            print(f"| manifest by {kind} | {span(us)} | {span(v['cpu_us'])} |")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("KEEP_WORK"):
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
