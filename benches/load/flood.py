#!/usr/bin/env python3
"""Header-flood memory bench: does berth's resident memory come back after floods of half-sent
request heads (slowloris), round after round, or does it ratchet up?

Design question (issue 9, "Limits under hostile load"): a fresh berth is flooded with N
connections that each send half a request head and then nothing; berth's header_read_timeout
closes them. This records berth's VmRSS before, at the peak of each flood, and SETTLE seconds
after the flood's connections were all closed, for ROUNDS rounds; a pull of /v2/ is timed during
each flood to show the service still answers.

Usage (loopback only; berth is started and stopped here):
    python3 benches/load/flood.py --berth target/release/berth [--connections 10000]
        [--rounds 3] [--settle 60] [--max-connections 4096] [--header-timeout 5s] [--max-growth MiB]

Needs a high open-files limit for this process and berth (it raises its own soft limit to the
hard limit; run under `ulimit -n 65536` as root if the hard limit is low).
"""
import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def half_head(port, opened, closed):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    opened.append(1)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\nX-Half: ")
    await writer.drain()
    try:
        await reader.read()  # until berth closes it (header_read_timeout)
    except OSError:
        pass
    closed.append(1)
    writer.close()


async def probe(port):
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status = (await reader.readline()).decode().strip()
    await reader.read()
    writer.close()
    return status, (time.monotonic() - started) * 1000


async def flood(port, pid, n):
    opened, closed = [], []
    tasks = [asyncio.create_task(half_head(port, opened, closed)) for _ in range(n)]
    peak = 0
    # Wait until the flood is in (bounded), tracking the peak.
    deadline = time.monotonic() + 60
    while len(opened) < n and time.monotonic() < deadline:
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.2)
    status, ms = await probe(port)
    while len(closed) < len(opened) and time.monotonic() < deadline + 120:
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks, return_exceptions=True)
    return len(opened), peak, status, ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", default="target/release/berth")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=60)
    ap.add_argument("--max-connections", type=int, default=4096)
    ap.add_argument("--header-timeout", default="5s")
    ap.add_argument("--max-growth", type=float, default=None,
                    help="fail (exit 1) if RSS SETTLE s after any flood is more than this many MiB "
                         "above the start (tests/run.sh uses it as a check)")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < a.connections + 100:
        if hard < 2100:
            sys.exit(f"open-files hard limit {hard} is too low for a flood: run under ulimit -n")
        print(f"open-files hard limit {hard}: flooding with {hard - 100} connections, not {a.connections}")
        a.connections = hard - 100

    tmp = tempfile.mkdtemp(prefix="berth-flood-")
    port, metrics = free_port(), free_port()
    cfg = os.path.join(tmp, "berth.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[server]\nlisten = "127.0.0.1:{port}"\nheader_read_timeout = "{a.header_timeout}"\n'
            f"max_connections = {a.max_connections}\n"
            f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
            f'[storage]\npath = "{tmp}/data"\n'
            f'[[upstream]]\nname = "docker.io"\nurl = "http://127.0.0.1:9"\ndefault = true\n'
        )
    log = open(os.path.join(tmp, "berth.log"), "w")
    proc = subprocess.Popen([a.berth, "serve", "--config", cfg], stderr=log, stdout=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("berth did not start")
                time.sleep(0.05)
        time.sleep(1)
        start = rss_kib(proc.pid)
        print(f"berth {a.berth}, max_connections {a.max_connections}, "
              f"header_read_timeout {a.header_timeout}, {a.connections} connections x {a.rounds} rounds")
        print(f"| round | connections held | peak RSS MiB | /v2/ during flood | RSS {a.settle:.0f} s after MiB |")
        print("|---|---|---|---|---|")
        print(f"| start | 0 | {start / 1024:.1f} | - | {start / 1024:.1f} |")
        failures = []
        for r in range(1, a.rounds + 1):
            held, peak, status, ms = asyncio.run(flood(port, proc.pid, a.connections))
            time.sleep(a.settle)
            after = rss_kib(proc.pid)
            print(f"| {r} | {held} | {peak / 1024:.1f} | {status.split(' ', 1)[-1]} in {ms:.0f} ms | {after / 1024:.1f} |")
            sys.stdout.flush()
            if not status.startswith("HTTP/1.1 200"):
                failures.append(f"round {r}: /v2/ during the flood answered {status!r}")
            if held < a.connections:
                failures.append(f"round {r}: only {held} of {a.connections} connections were accepted")
            if a.max_growth is not None and (after - start) / 1024 > a.max_growth:
                failures.append(f"round {r}: RSS {after / 1024:.1f} MiB {a.settle:.0f} s after the flood, "
                                f"more than {a.max_growth} MiB above the start ({start / 1024:.1f} MiB)")
        if failures:
            sys.exit("FAILED:\n" + "\n".join(failures))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
