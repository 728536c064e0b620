#!/usr/bin/env python3
"""Where a profiled berth spends its CPU, as shares of its samples: reads `perf script` output of a
`perf record -g` (bucket_path.py --perf DIR writes them) and puts each sample in the first class
its stack matches, leaf first within each class's markers, classes in the order below.

Usage: perf script -i DIR/after-cold-x3.data | python3 benches/load/perf_shares.py [--by-pid]
       python3 benches/load/perf_shares.py FILE.data [--by-pid]   (runs `perf script` itself)

Classes (a sample's stack, kernel and user frames, searched for these symbol parts):
  sha256          sha2's compress functions (the digest check, and piece hashes)
  page faults     the kernel's fault path (fresh heap pages: glibc returning memory, then taking it)
  socket receive  tcp_recvmsg (bytes in from the upstream, the bucket or a peer)
  socket send     tcp_sendmsg, sendfile/splice (bytes out to a client or a peer)
  file write      ext4/generic buffered writes (the pending file)
  file read       filemap reads (a committed file read back: an upload, a follower)
  wake and wait   epoll, futex, scheduling, the idle loop
  user memcpy     memcpy/memmove outside the classes above (buffers copied in user space)
  other           the rest (hyper, tokio, rustls, allocation, syscall entry, ...)

The previous figures were summarised by hand from `perf report`; this keeps the classification
the same from run to run.
"""
import argparse
import collections
import subprocess
import sys

CLASSES = [
    ("sha256", ("sha256", "sha2::", "compress256", "sha256_ni")),
    ("page faults", ("asm_exc_page_fault", "exc_page_fault", "handle_mm_fault", "do_anonymous_page")),
    ("socket receive", ("tcp_recvmsg",)),
    ("socket send", ("tcp_sendmsg", "do_sendfile", "splice_direct", "do_splice")),
    ("file write", ("ext4_buffered_write_iter", "generic_perform_write", "ext4_file_write_iter")),
    ("file read", ("filemap_read", "ext4_file_read_iter")),
    ("wake and wait", ("epoll_wait", "ep_poll", "futex", "schedule", "do_idle", "try_to_wake_up")),
    ("user memcpy", ("__memmove", "__memcpy", "memcpy", "memmove")),
]


def classify(frames):
    for name, marks in CLASSES:
        for f in frames:
            if any(m in f for m in marks):
                return name
    return "other"


def samples(lines):
    """Yields (comm, pid, frames) per sample of `perf script` text."""
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head:
                yield head[0], head[1], frames
            head, frames = None, []
        elif head is None:
            # "comm pid/tid [cpu] time: period event:" or "comm pid [cpu] ..."
            parts = line.split()
            pid = next((p.split("/")[0] for p in parts[1:3] if p.split("/")[0].isdigit()), "?")
            head = (parts[0], pid)
        else:
            parts = line.split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    if head:
        yield head[0], head[1], frames


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="a perf.data file (else `perf script` text on stdin)")
    ap.add_argument("--by-pid", action="store_true", help="one column per process")
    args = ap.parse_args()
    if args.data:
        out = subprocess.run(["perf", "script", "-i", args.data], capture_output=True, text=True, check=True).stdout
        lines = out.splitlines(True)
    else:
        lines = sys.stdin
    counts = collections.defaultdict(collections.Counter)
    for comm, pid, frames in samples(lines):
        key = pid if args.by_pid else "all"
        counts[key][classify(frames)] += 1
    keys = sorted(counts)
    print("| class | " + " | ".join(f"{k} share" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in [c for c, _ in CLASSES] + ["other"]:
        cells = []
        for k in keys:
            total = sum(counts[k].values())
            cells.append(f"{100 * counts[k][name] / total:.1f}%" if total else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| samples | " + " | ".join(str(sum(counts[k].values())) for k in keys) + " |")


if __name__ == "__main__":
    main()
