#!/usr/bin/env python3
"""A lying fleet node for the test bed (benches/load/fleet.py, scenario `liar`): it holds the
fleet secret, joins a digest's swarm on the parent's tracker as a node does, claims it holds the
blob (or is ahead of everyone) so that the tracker hands it out as a source, and serves other
nodes wrong bytes of the right length. It never fetches the blob itself.

The tracker call (src/fill/swarm/link.rs, src/swarm/protocol.rs): `POST
/_berth/fleet/v1/swarm/<digest>?size=N`, a JSON body `{"node", "have", "complete",
"need_source", "uploads"}`, with `Authorization: Berth-Fleet <unix seconds> <hex HMAC-SHA256>`
over `berth-fleet-v1\\nPOST\\n<path and query>\\nsha256:<body hex>\\n<seconds>` and
`Berth-Fleet-Body: sha256:<body hex>`, keyed with the secret file's
trimmed contents (src/cluster/auth.rs, src/fleet/mod.rs). The liar joins asking for a source
(with `uploads` slots, so the tracker may give it that many children), then:
  --claim complete  says it completed the blob (`have` = size): a holder, the tracker's first
                    choice for every node that asks (rule 1 of src/swarm/tracker.rs);
  --claim progress  reports `have` growing at --claim-rate (never the whole blob): a receiver
                    ahead of the others, chosen before the parent (rule 2).
and calls again every --every seconds, well inside the tracker's 30 s expiry.

What it serves (src/swarm/transfer.rs, the wire a node expects): `GET
/_berth/fleet/v1/blobs/<digest>` with `Range: bytes=F-` is answered 206 with `Content-Range:
bytes F-(size-1)/size` and size - F bytes:
  --bytes flip     the real blob (--blob, a copy the bed keeps) with one byte flipped in piece
                   --piece (1 MiB pieces up to 4 GiB blobs; the bed's blobs are smaller), so every
                   piece before it is good and the node learns of the lie only at that piece;
  --bytes garbage  pseudo-random bytes from the first byte.
Any other path or digest: 404. The proof of a request is not checked (a liar serves anyone).

`GET /_liar/stats` answers its counters as JSON: bytes sent, blob requests and the offsets
they asked from, the tracker calls and their answers. It prints `ready` once it listens, waits for a line on stdin, joins and
claims, prints `joined <status of the join> <status of the claim>` (200 each when the tracker
took them), and goes on claiming until killed.

Stdlib only. Usage (the bed starts it in the liar's namespace):
  liar.py --listen IP:PORT --self URL --parent URL --secret-file F --digest D --size N
          [--claim complete|progress] [--bytes flip|garbage] [--blob F] [--piece K]
"""
import argparse
import hashlib
import hmac
import http.client
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

SWARM = "/_berth/fleet/v1/swarm/"
BLOBS = "/_berth/fleet/v1/blobs/"
PIECE = 1 << 20  # the piece size of every blob up to 4 GiB (src/swarm/pieces.rs)
CHUNK = 1 << 16


def piece_size(size):
    p = PIECE
    while -(-size // p) > 4096:
        p *= 2
    return p


class Liar:
    def __init__(self, args):
        self.args = args
        with open(args.secret_file, "rb") as f:
            self.key = f.read().strip()
        self.lock = threading.Lock()
        self.stats = {"bytes": 0, "requests": 0, "ranges": [], "tracker": []}
        p = piece_size(args.size)
        self.flip_at = min(args.size - 1, args.piece * p + p // 2)
        self.noise = hashlib.sha256(b"liar").digest() * (CHUNK // 32)

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    # -- the tracker --

    def sign(self, method, path, body):
        """The proof's headers: the signed target is the path, a newline and the body's digest,
        which `Berth-Fleet-Body` names (src/fleet/mod.rs)."""
        ts = int(time.time())
        named = "sha256:" + hashlib.sha256(body).hexdigest()
        msg = f"berth-fleet-v1\n{method}\n{path}\n{named}\n{ts}".encode()
        mac = hmac.new(self.key, msg, hashlib.sha256).hexdigest()
        return {"Authorization": f"Berth-Fleet {ts} {mac}", "Berth-Fleet-Body": named}

    def call(self, body):
        path = f"{SWARM}{self.args.digest}?size={self.args.size}"
        u = urllib.parse.urlsplit(self.args.parent)
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=5)
        try:
            data = json.dumps(body).encode()
            c.request("POST", path, body=data, headers={
                **self.sign("POST", path, data), "Content-Type": "application/json"})
            r = c.getresponse()
            answer = r.read().decode(errors="replace")
            status = r.status
        except OSError as e:
            status, answer = 0, repr(e)
        finally:
            c.close()
        with self.lock:
            self.stats["tracker"].append({"t": time.time(), "have": body["have"],
                                          "complete": body["complete"], "status": status,
                                          "answer": answer[:300]})
        return status

    def claims(self):
        """Joins, then claims, again every --every seconds, until killed."""
        a, size = self.args, self.args.size
        me = {"node": a.self_url, "uploads": a.uploads}
        start = time.time()
        first = min(size - 1, piece_size(size)) if a.claim == "progress" else 0
        status = self.call(me | {"have": first, "complete": False, "need_source": True})
        while True:
            if a.claim == "complete":
                claimed = self.call({"node": a.self_url, "have": size, "complete": True, "need_source": False})
            else:
                have = min(size - 1, first + int((time.time() - start) * a.claim_rate))
                claimed = self.call(me | {"have": have, "complete": False, "need_source": False})
            if status is not None:
                print(f"joined {status} {claimed}", flush=True)
                status = None
            time.sleep(a.every)

    # -- serving --

    def body(self, f, start, end):
        """The wrong bytes of [start, end), in chunks."""
        pos = start
        while pos < end:
            n = min(CHUNK, end - pos)
            if self.args.bytes == "garbage":
                off = pos % CHUNK
                chunk = (self.noise[off:] + self.noise)[:n]
            else:
                chunk = bytearray(os.pread(f, n, pos))
                if not chunk:
                    return  # the file is short: the body ends short, as a broken one
                if pos <= self.flip_at < pos + len(chunk):
                    chunk[self.flip_at - pos] ^= 0xFF
                chunk = bytes(chunk)
            yield chunk
            pos += len(chunk)


def handler(liar):
    size, digest = liar.args.size, liar.args.digest

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def empty(self, status, body=b""):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/_liar/stats":
                with liar.lock:
                    return self.empty(200, json.dumps(liar.stats).encode())
            if self.path != BLOBS + digest:
                return self.empty(404)
            rng = self.headers.get("Range", "")
            try:
                start = int(rng.removeprefix("bytes=").removesuffix("-")) if rng else 0
            except ValueError:
                return self.empty(416)
            if not 0 <= start < size:
                return self.empty(416)
            liar.count("requests")
            with liar.lock:
                liar.stats["ranges"].append(start)
            self.send_response(206 if rng else 200)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            f = os.open(liar.args.blob, os.O_RDONLY) if liar.args.bytes == "flip" else None
            try:
                for chunk in liar.body(f, start, size):
                    self.wfile.write(chunk)
                    liar.count("bytes", len(chunk))
            except OSError:
                self.close_connection = True  # the node dropped the liar mid-body
            finally:
                if f is not None:
                    os.close(f)

    return H


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="IP:PORT")
    ap.add_argument("--self", dest="self_url", required=True, help="the URL nodes reach it at")
    ap.add_argument("--parent", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--digest", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--claim", choices=("complete", "progress"), default="complete")
    ap.add_argument("--claim-rate", type=float, default=50e6, help="bytes/s claimed (progress)")
    ap.add_argument("--bytes", choices=("flip", "garbage"), default="flip")
    ap.add_argument("--blob", help="the real blob (--bytes flip)")
    ap.add_argument("--piece", type=int, default=0, help="the piece with the flipped byte")
    ap.add_argument("--uploads", type=int, default=4, help="upload slots announced (1 to 64)")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between tracker calls")
    args = ap.parse_args()
    if args.bytes == "flip" and not args.blob:
        ap.error("--bytes flip needs --blob")
    liar = Liar(args)
    host, port = args.listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler(liar))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.readline()
    liar.claims()


if __name__ == "__main__":
    main()
