#!/usr/bin/env python3
"""Where a profiled berth spends its CPU, as shares of its samples: reads `perf script` output of a
`perf record -g` (bucket_path.py --perf DIR writes them) and puts each sample in the first class
its stack matches, leaf first within each class's markers, classes in the order below.

Usage: python3 benches/load/perf_shares.py FILE.data [--by all|process|thread]
       perf script -F comm,pid,tid,ip,sym,dso -i FILE.data | python3 benches/load/perf_shares.py

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
    """Yields (comm, pid, tid, frames) per sample of `perf script -F comm,pid,tid,ip,sym,dso`."""
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head:
                yield (*head, frames)
            head, frames = None, []
        elif head is None:
            # "comm pid/tid" (comm may hold spaces: the ids are the last field)
            ids = line.split()[-1]
            pid, _, tid = ids.partition("/")
            head = (line.rsplit(None, 1)[0].strip(), pid, tid or pid)
        else:
            parts = line.split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    if head:
        yield (*head, frames)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="a perf.data file (else `perf script` text on stdin)")
    ap.add_argument("--by", choices=["all", "process", "thread"], default="all", help="one column per ...")
    args = ap.parse_args()
    if args.data:
        out = subprocess.run(
            ["perf", "script", "-F", "comm,pid,tid,ip,sym,dso", "-i", args.data],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lines = out.splitlines(True)
    else:
        lines = sys.stdin
    counts = collections.defaultdict(collections.Counter)
    for _comm, pid, tid, frames in samples(lines):
        key = {"all": "all", "process": pid, "thread": tid}[args.by]
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
