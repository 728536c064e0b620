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
        The node berths of deploy/kubernetes/node/ (node mode) the same way: their manifests and
        kustomization, and their ConfigMap's template rendered with a node IP through
        `berth check-config`, its hosts.toml pointing at the DaemonSet's port on 127.0.0.1 and the
        DaemonSet on the host network.
    python tests/kubernetes.py selftest --berth target/debug/berth
        both checks pass on a copy of deploy/kubernetes/, then fail, each for the right reason,
        on copies broken one way at a time (a check that cannot fail proves nothing).

Run it with the Python of kubernetes-validate's venv (tests/install-deps.sh makes it): it needs
PyYAML, which that venv has. Exits 1 with the reason on the first failure.
"""

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The node berths (node mode), applied on their own: a directory under K8S.
NODE = "node"
# What the node config template holds where each node's IP goes (daemonset.yaml's init step).
NODE_IP = "@NODE_IP@"
# The oldest version the manifests are written for (preStop `sleep` is on by default from
# 1.30) and the newest the installed kubernetes-validate bundles (its default).
VERSIONS = ["1.30.0", None]
# Not applied by kustomization.yaml: itself, and the Secret template with placeholders.
NOT_APPLIED = {"secret.example.yaml", "kustomization.yaml"}
# The line that may differ between the per-pod configs: [cluster] self, commented out or not.
SELF_LINE = re.compile(r"^\s*#?\s*self\s*=")
# kubernetes-validate has no schema for kustomize's own file and says so; nothing to report.
KUSTOMIZATION_WARNING = "Couldn't find schema for kind Kustomization"


class CheckFailed(Exception):
    pass


def load(root, name):
    return yaml.safe_load((root / name).read_text())


def validate(root):
    done = validate_dir(root)
    node = validate_dir(root / NODE)
    return f"{done}; node/: {node}"


def validate_dir(root):
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        raise CheckFailed(f"no manifests in {root}")
    for version in VERSIONS:
        cmd = ["kubernetes-validate", "--strict", "--quiet"]
        if version:
            cmd += ["-k", version]
        r = subprocess.run(
            cmd + [str(p) for p in files], capture_output=True, text=True
        )
        out = [
            line
            for line in (r.stdout + r.stderr).splitlines()
            if KUSTOMIZATION_WARNING not in line
        ]
        if r.returncode != 0:
            raise CheckFailed(
                f"kubernetes-validate failed (Kubernetes {version or 'newest'}):\n"
                + "\n".join(out)
            )
        for line in out:
            print(line)
    listed = set(load(root, "kustomization.yaml").get("resources") or [])
    present = {p.name for p in files} - NOT_APPLIED
    if listed - present:
        raise CheckFailed(f"kustomization.yaml lists missing files: {sorted(listed - present)}")
    if present - listed:
        raise CheckFailed(f"kustomization.yaml does not list: {sorted(present - listed)}")
    return f"{len(files)} manifests valid (Kubernetes 1.30 and newest), kustomization complete"


def config(root, berth):
    if not os.access(berth, os.X_OK):
        raise CheckFailed(f"{berth} is not an executable berth (build it first: cargo build)")
    replicas = load(root, "statefulset.yaml")["spec"]["replicas"]
    namespace = load(root, "kustomization.yaml")["namespace"]
    data = load(root, "configmap.yaml")["data"]
    want = {f"berth-{i}.toml" for i in range(replicas)}
    if set(data) != want:
        raise CheckFailed(
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
            raise CheckFailed(f"{name}: [cluster] self must be http://{own}:PORT, found {selfs}")
        rest = [line for line in lines if not SELF_LINE.match(line)]
        if common is None:
            common = rest
        elif rest != common:
            diff = [(a, b) for a, b in zip(common, rest) if a != b][:3]
            diff = diff or "a different number of lines"
            raise CheckFailed(f"{name} differs from berth-0.toml beyond [cluster] self: {diff}")
        named = {(int(m[1]), m[2]) for line in rest for m in peer.finditer(line)}
        if named != {(j, namespace) for j in range(replicas)}:
            raise CheckFailed(
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
                raise CheckFailed(
                    f"berth check-config rejects configmap.yaml's {name}:\n{r.stderr}{r.stdout}"
                )
    node = node_config(root / NODE, berth)
    return f"{replicas} per-pod configs agree and pass berth check-config; {node}"


def node_config(root, berth):
    data = load(root, "configmap.yaml")["data"]
    ds = load(root, "daemonset.yaml")["spec"]["template"]["spec"]
    if not ds.get("hostNetwork"):
        raise CheckFailed("node/daemonset.yaml: the node berth must run with hostNetwork: true")
    template = data["config.toml"]
    selfs = [line for line in template.splitlines() if SELF_LINE.match(line)]
    if len(selfs) != 1 or f"//{NODE_IP}:" not in selfs[0]:
        raise CheckFailed(f"node/configmap.yaml: [fleet] self must be http://{NODE_IP}:PORT, found {selfs}")
    port = re.search(r'^listen = "0\.0\.0\.0:(\d+)"', template, re.M)
    if not port or f'[host."http://127.0.0.1:{port[1]}"]' not in data["hosts.toml"]:
        raise CheckFailed(
            "node/configmap.yaml: hosts.toml must point at http://127.0.0.1:<[server] listen port>"
        )
    with tempfile.TemporaryDirectory(prefix="berth-k8s-node.") as tmp:
        tmp = Path(tmp)
        (tmp / "secrets").mkdir()
        (tmp / "secrets" / "fleet-secret").write_text(secrets.token_urlsafe(48))
        f = tmp / "config.toml"
        f.write_text(
            template.replace(NODE_IP, "10.0.3.7").replace("/etc/berth/secrets/", f"{tmp}/secrets/")
        )
        r = subprocess.run(
            [berth, "check-config", "--config", str(f)], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise CheckFailed(
                f"berth check-config rejects node/configmap.yaml's config.toml:\n{r.stderr}{r.stdout}"
            )
    return "the node config passes berth check-config"


def in_pod_file(pod, old, new):
    """An edit of configmap.yaml confined to one pod's file."""

    def edit(text):
        start = text.index(f"\n  {pod}.toml: |\n")
        end = text.find("\n  berth-", start + 1)
        end = len(text) if end < 0 else end
        part = text[start:end]
        if old not in part:
            raise AssertionError(f"selftest: {old!r} not in {pod}.toml")
        return text[:start] + part.replace(old, new, 1) + text[end:]

    return edit


def everywhere(old, new):
    def edit(text):
        if old not in text:
            raise AssertionError(f"selftest: {old!r} not found")
        return text.replace(old, new)

    return edit


# (what is broken, file, edit, which check, what its failure must say)
BREAKAGES = [
    ("an unknown field", "statefulset.yaml",
     everywhere("podManagementPolicy: Parallel", "podManagementPolicy: Parallel\n  replica: 3"),
     "validate", "'replica' was unexpected"),
    ("a misspelt key", "pdb.yaml", everywhere("maxUnavailable:", "maxUnavailabe:"),
     "validate", "'maxUnavailabe' was unexpected"),
    ("a wrong type", "service.yaml", everywhere("port: 5000", "port: five-thousand"),
     "validate", "is not of type 'integer'"),
    ("a manifest left out", "kustomization.yaml", everywhere("  - pdb.yaml\n", ""),
     "validate", "does not list: ['pdb.yaml']"),
    ("a resource that does not exist", "kustomization.yaml",
     everywhere("  - pdb.yaml\n", "  - pdb.yaml\n  - hpa.yaml\n"),
     "validate", "lists missing files: ['hpa.yaml']"),
    ("an unknown config key", "configmap.yaml",
     everywhere('max_size = "20GiB"\n', 'max_size = "20GiB"\n    max_sise = "1GiB"\n'),
     "config", "unknown field `max_sise`"),
    ("one pod's file drifting", "configmap.yaml",
     in_pod_file("berth-1", 'tag_ttl = "30s"', 'tag_ttl = "31s"'),
     "config", "berth-1.toml differs from berth-0.toml"),
    ("self naming another pod", "configmap.yaml",
     in_pod_file("berth-2", "self = \"http://berth-2.", "self = \"http://berth-0."),
     "config", "berth-2.toml: [cluster] self must be http://berth-2.berth-peers.berth.svc"),
    ("a replica missing from peers", "configmap.yaml",
     everywhere('"http://berth-2.berth-peers.berth.svc:5000",\n', ""),
     "config", "the peers must be berth-0..2"),
    ("a replica without its file", "statefulset.yaml", everywhere("replicas: 3", "replicas: 4"),
     "config", "pods need ['berth-0.toml', 'berth-1.toml', 'berth-2.toml', 'berth-3.toml']"),
    ("an unknown field in the node DaemonSet", "node/daemonset.yaml",
     everywhere("hostNetwork: true", "hostNetwork: true\n      hostNetwrk: true"),
     "validate", "'hostNetwrk' was unexpected"),
    ("a node manifest left out", "node/kustomization.yaml", everywhere("  - service.yaml\n", ""),
     "validate", "does not list: ['service.yaml']"),
    ("the node berth off the host network", "node/daemonset.yaml",
     everywhere("hostNetwork: true", "hostNetwork: false"),
     "config", "must run with hostNetwork: true"),
    ("an unknown key in the node config", "node/configmap.yaml",
     everywhere('peers_dns = "berth-node.berth.svc"\n', 'peers_dns = "berth-node.berth.svc"\n    max_uplods = 4\n'),
     "config", "unknown field `max_uplods`"),
    ("a node's self fixed to one address", "node/configmap.yaml",
     everywhere("http://@NODE_IP@:5001", "http://10.0.0.1:5001"),
     "config", "[fleet] self must be http://@NODE_IP@:PORT"),
    ("hosts.toml pointing elsewhere", "node/configmap.yaml",
     everywhere('[host."http://127.0.0.1:5001"]', '[host."http://127.0.0.1:5000"]'),
     "config", "hosts.toml must point at"),
]


def selftest(berth):
    checks = {"validate": lambda root: validate(root), "config": lambda root: config(root, berth)}
    with tempfile.TemporaryDirectory(prefix="berth-k8s-selftest.") as tmp:
        copy = Path(tmp) / "kubernetes"
        shutil.copytree(K8S, copy)
        for name, check in checks.items():
            check(copy)
        for what, file, edit, check, expect in BREAKAGES:
            shutil.rmtree(copy)
            shutil.copytree(K8S, copy)
            (copy / file).write_text(edit((copy / file).read_text()))
            try:
                checks[check](copy)
            except CheckFailed as e:
                if expect not in str(e):
                    raise CheckFailed(f"selftest, {what} in {file}: failed, but saying {e}")
            else:
                raise CheckFailed(f"selftest, {what} in {file}: `{check}` passed it")
        try:
            config(copy, str(Path(tmp) / "no-berth"))
        except CheckFailed:
            pass
        else:
            raise CheckFailed("selftest: `config` passed without a berth binary")
    return f"{len(BREAKAGES) + 1} broken copies, each refused for its reason"


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("validate")
    for cmd in ("config", "selftest"):
        c = sub.add_parser(cmd)
        c.add_argument("--berth", required=True, help="the berth binary (target/debug/berth)")
    args = ap.parse_args()
    try:
        if args.cmd == "validate":
            print(validate(K8S))
        elif args.cmd == "config":
            print(config(K8S, args.berth))
        else:
            print(selftest(args.berth))
    except CheckFailed as e:
        print(f"tests/kubernetes.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
