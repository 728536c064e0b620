"""Checks deploy/kubernetes/ offline, for tests/run.sh (CI) and by hand.

    python tests/kubernetes.py validate
        every manifest through `kubernetes-validate --strict` against the oldest Kubernetes the
        manifests claim (1.30: the preStop sleep action) and the newest schemas bundled; and
        kustomization.yaml lists every manifest there is (secret.example.yaml aside) and only those.
    python tests/kubernetes.py config --berth target/debug/berth
        the ConfigMap's per-pod configs: one per replica of the StatefulSet (berth-0.toml ...),
        identical but for their [cluster] self, which names their own pod; the peer addresses
        name the replicas that exist in kustomization.yaml's namespace; and each file passes
        `berth check-config`, with the secret files it names created in a temp dir and S3
        credentials in the environment (as statefulset.yaml provides them).

Run it with the Python of kubernetes-validate's venv (tests/install-deps.sh makes it): it needs
PyYAML, which that venv has. Exits 1 with the reason on the first failure.
"""

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
# The oldest version the manifests are written for (preStop `sleep` is on by default from
# 1.30) and the newest the installed kubernetes-validate bundles (its default).
VERSIONS = ["1.30.0", None]
# The only manifest kustomization.yaml must not apply: it is a template with placeholders.
NOT_APPLIED = {"secret.example.yaml", "kustomization.yaml"}
# The line that may differ between the per-pod configs: [cluster] self, commented out or not.
SELF_LINE = re.compile(r"^\s*#?\s*self\s*=")


def fail(msg):
    print(f"tests/kubernetes.py: {msg}", file=sys.stderr)
    sys.exit(1)


def load(name):
    return yaml.safe_load((K8S / name).read_text())


def validate():
    files = sorted(p for p in K8S.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        fail(f"no manifests in {K8S}")
    for version in VERSIONS:
        cmd = ["kubernetes-validate", "--strict", "--quiet"]
        if version:
            cmd += ["-k", version]
        # kustomization.yaml has no Kubernetes schema: it only warns (checked below instead).
        r = subprocess.run(cmd + [str(p) for p in files])
        if r.returncode != 0:
            fail(f"kubernetes-validate failed (Kubernetes {version or 'newest'})")
    listed = set(load("kustomization.yaml").get("resources") or [])
    present = {p.name for p in files} - NOT_APPLIED
    if listed - present:
        fail(f"kustomization.yaml lists missing files: {sorted(listed - present)}")
    if present - listed:
        fail(f"kustomization.yaml does not list: {sorted(present - listed)}")
    print(f"{len(files)} manifests valid (Kubernetes 1.30 and newest), kustomization complete")


def config(berth):
    if not os.access(berth, os.X_OK):
        fail(f"{berth} is not an executable berth (build it first: cargo build)")
    replicas = load("statefulset.yaml")["spec"]["replicas"]
    namespace = load("kustomization.yaml")["namespace"]
    data = load("configmap.yaml")["data"]
    want = {f"berth-{i}.toml" for i in range(replicas)}
    if set(data) != want:
        fail(
            f"configmap.yaml holds {sorted(data)}, "
            f"the StatefulSet's {replicas} pods need {sorted(want)}"
        )
    peer = re.compile(r"berth-(\d+)\.berth-peers\.([a-z0-9-]+)\.svc")
    common = None
    for i in range(replicas):
        name = f"berth-{i}.toml"
        lines = data[name].splitlines()
        selfs = [line for line in lines if SELF_LINE.match(line)]
        own = f"berth-{i}.berth-peers.{namespace}.svc"
        if len(selfs) != 1 or f"//{own}:" not in selfs[0]:
            fail(f"{name}: [cluster] self must be http://{own}:PORT, found {selfs}")
        rest = [line for line in lines if not SELF_LINE.match(line)]
        if common is None:
            common = rest
        elif rest != common:
            diff = [(a, b) for a, b in zip(common, rest) if a != b][:3]
            diff = diff or "a different number of lines"
            fail(f"{name} differs from berth-0.toml beyond [cluster] self: {diff}")
        named = {(int(m[1]), m[2]) for line in rest for m in peer.finditer(line)}
        if named != {(j, namespace) for j in range(replicas)}:
            fail(
                f"{name}: the peers must be berth-0..{replicas - 1} in namespace {namespace}, "
                f"found {sorted(named)}"
            )
    with tempfile.TemporaryDirectory(prefix="berth-k8s.") as tmp:
        tmp = Path(tmp)
        # What statefulset.yaml mounts from the Secret, with a made-up value of the right size.
        (tmp / "secrets").mkdir()
        (tmp / "secrets" / "cluster-secret").write_text(secrets.token_urlsafe(48))
        # [storage.s3] without access_key_id reads these, as statefulset.yaml sets them.
        env = dict(
            os.environ, AWS_ACCESS_KEY_ID="k8s-check", AWS_SECRET_ACCESS_KEY="k8s-check-secret"
        )
        for i in range(replicas):
            name = f"berth-{i}.toml"
            f = tmp / name
            f.write_text(data[name].replace("/etc/berth/secrets/", f"{tmp}/secrets/"))
            r = subprocess.run(
                [berth, "check-config", "--config", str(f)],
                env=env,
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                fail(f"berth check-config rejects configmap.yaml's {name}:\n{r.stderr}{r.stdout}")
    print(f"{replicas} per-pod configs agree and pass berth check-config")


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("validate")
    c = sub.add_parser("config")
    c.add_argument("--berth", required=True, help="the berth binary (target/debug/berth)")
    args = ap.parse_args()
    if args.cmd == "validate":
        validate()
    else:
        config(args.berth)


if __name__ == "__main__":
    main()
