"""A real ORAS client for the end-to-end suite: oras-py (PyPI `oras`, pinned in
tests/install-deps.sh, which installs it into the venv it makes), driven by
tests/e2e/referrers.rs. Each command prints one JSON object on stdout.

    python tests/oras_client.py push --registry HOST:PORT --target REPO:TAG
            --file PATH:MEDIATYPE --config PATH:MEDIATYPE --annotation KEY=VALUE
            --subject MEDIATYPE,DIGEST,SIZE
        pushes the files as an artifact whose manifest names the subject (oras-py's `push` with
        `subject=`); prints {"digest": the manifest's digest, as the registry answered it}.
    python tests/oras_client.py pull --registry HOST:PORT --target REPO@DIGEST|REPO:TAG --outdir DIR
        pulls the artifact's files (oras-py's `pull`); prints {"files": [paths]}.
    python tests/oras_client.py manifest --registry HOST:PORT --target REF --accept MEDIATYPE
        fetches a manifest (oras-py's `get_manifest`, its Accept limited to MEDIATYPE); prints it.

oras-py 0.2.43 writes no `artifactType` (the config's media type stands for it, as OCI 1.1
says), keeps no referrers tag schema index up to date, and has no call that lists referrers:
the test does those in plain HTTP and says so. Plain HTTP to the registry (`insecure`), no
credentials.
"""

import argparse
import json
import os
import sys

import oras.oci
import oras.provider


def client(registry):
    return oras.provider.Registry(hostname=registry, insecure=True)


def push(args):
    media_type, digest, size = args.subject.split(",")
    subject = oras.oci.Subject(mediaType=media_type, digest=digest, size=int(size))
    annotations = dict(a.split("=", 1) for a in args.annotation)
    resp = client(args.registry).push(
        target=f"{args.registry}/{args.target}",
        files=args.file,
        manifest_config=args.config,
        manifest_annotations=annotations or None,
        subject=subject,
        quiet=True,
    )
    return {"digest": resp.headers["Docker-Content-Digest"]}


def pull(args):
    files = client(args.registry).pull(
        target=f"{args.registry}/{args.target}", outdir=args.outdir
    )
    return {"files": [os.path.relpath(f, args.outdir) for f in files]}


def manifest(args):
    return client(args.registry).get_manifest(
        f"{args.registry}/{args.target}", allowed_media_type=[args.accept]
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("push", "pull", "manifest"):
        s = sub.add_parser(name)
        s.add_argument("--registry", required=True)
        s.add_argument("--target", required=True)
    s = sub.choices["push"]
    s.add_argument("--file", action="append", required=True)
    s.add_argument("--config", required=True)
    s.add_argument("--annotation", action="append", default=[])
    s.add_argument("--subject", required=True)
    sub.choices["pull"].add_argument("--outdir", required=True)
    sub.choices["manifest"].add_argument("--accept", required=True)
    args = p.parse_args()
    out = {"push": push, "pull": pull, "manifest": manifest}[args.command](args)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
