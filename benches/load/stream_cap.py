#!/usr/bin/env python3
"""A TCP relay that caps each connection's download (server to client) at a rate: one S3 stream
as a remote bucket gives it (AWS S3 serves a single GET at tens of MB/s however fast the link),
in front of a local RGW. bucket_path.py --stream-cap starts it; berth's bucket and the direct GET
then go through it. Bytes are relayed unchanged (SigV4 signs the Host header the client sent,
which the relay passes on as it is).

Usage: python3 benches/load/stream_cap.py --listen PORT --to HOST:PORT --mbyte-per-s N
"""
import argparse
import asyncio
import time

CHUNK = 64 * 1024


async def pipe(reader, writer, rate):
    """Copies reader to writer; with `rate` (bytes/s), through a token bucket of one chunk's
    burst, so an idle kept-alive connection earns no credit for the next answer."""
    tokens, last = float(CHUNK), time.monotonic()
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            if rate:
                now = time.monotonic()
                tokens = min(float(CHUNK), tokens + (now - last) * rate) - len(data)
                last = now
                if tokens < 0:
                    await asyncio.sleep(-tokens / rate)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--to", required=True, help="HOST:PORT of the server")
    ap.add_argument("--mbyte-per-s", type=float, required=True, help="each connection's download cap, MB/s")
    args = ap.parse_args()
    host, port = args.to.rsplit(":", 1)
    rate = args.mbyte_per_s * 1e6

    async def serve(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, int(port))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, sw, None), pipe(sr, cw, rate))

    server = await asyncio.start_server(serve, "127.0.0.1", args.listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
