#!/usr/bin/env bash
# Installs what the end-to-end suite (tests/e2e.rs) and the benchmarks need, from Debian's apt:
# the Distribution registry, the clients that pull through berth (skopeo, containerd's ctr, podman,
# dockerd), nginx and the load tools; Prometheus (server and promtool) for tests/it/observability.rs;
# podman, runc and strip (binutils) for the container image (tests/it/container.rs); a C++
# compiler for libFuzzer (fuzz/run.sh); Ceph's S3 gateway (radosgw, one mon, one memstore OSD) for
# the bucket tier (tests/s3.rs, started by tests/ceph/start-ceph.sh); kubernetes-validate (PyPI,
# Kubernetes' schemas bundled, so it works offline) for tests/kubernetes.py, in a venv of its own
# (python3-venv) linked onto PATH; oras-py (PyPI `oras`), the ORAS client of the referrers
# end-to-end test (tests/oras_client.py), in the same venv; sigstore-js (npm registry, pinned in
# tests/sigstore/) for the signature policy's end-to-end test; cargo-mutants and cargo-nextest
# (crates.io, `cargo install`) for tests/mutants.sh. Idempotent: does nothing when everything is
# there; otherwise needs root, runs `apt-get update` once and installs what is missing. Quiet
# unless it fails.
set -euo pipefail

packages=(docker-registry skopeo containerd podman runc docker.io nginx-light wrk apache2-utils jq uidmap procps prometheus binutils g++ radosgw ceph-mon ceph-osd uuid-runtime curl python3-venv)
commands=(docker-registry skopeo containerd ctr podman runc dockerd docker nginx wrk ab jq newuidmap kill prometheus promtool strip c++ radosgw ceph-mon ceph-osd radosgw-admin uuidgen curl kubernetes-validate)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: missing ${missing[*]}; run as root (it uses apt-get)" >&2
        exit 1
    fi
    log=$(mktemp /tmp/berth-install-deps.XXXXXX.log)
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q && apt-get install -y -q "${missing[@]}"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "install-deps: apt-get failed; full log in $log" >&2
        exit 1
    fi
    rm -f "$log"
fi

# Pinned: a new release bundles new schemas and may judge the manifests differently.
kv_version=1.37.0
kv_venv=${BERTH_CI_VENV:-/opt/berth-ci/venv}
if [[ $("$kv_venv/bin/kubernetes-validate" --version 2>/dev/null) != "$kv_version" ]] ||
    [[ $(readlink /usr/local/bin/kubernetes-validate) != "$kv_venv/bin/kubernetes-validate" ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: kubernetes-validate $kv_version missing; run as root (it installs into $kv_venv)" >&2
        exit 1
    fi
    log=$(mktemp /tmp/berth-install-deps.XXXXXX.log)
    echo "install-deps: installing kubernetes-validate $kv_version into $kv_venv"
    if ! { python3 -m venv "$kv_venv" &&
        "$kv_venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "install-deps: pip failed; full log in $log" >&2
        exit 1
    fi
    rm -f "$log"
    ln -sfn "$kv_venv/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
fi

# Pinned: the end-to-end test drives its push and pull and knows what it leaves out.
oras_version=0.2.43
if [[ $("$kv_venv/bin/python" -c 'import oras.version; print(oras.version.__version__)' 2>/dev/null) != "$oras_version" ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: oras-py $oras_version missing; run as root (it installs into $kv_venv)" >&2
        exit 1
    fi
    log=$(mktemp /tmp/berth-install-deps.XXXXXX.log)
    echo "install-deps: installing oras-py $oras_version into $kv_venv"
    if ! "$kv_venv/bin/pip" install -q --disable-pip-version-check "oras==$oras_version" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "install-deps: pip failed; full log in $log" >&2
        exit 1
    fi
    rm -f "$log"
fi

# Pinned (tests/sigstore/package.json and its lock): sigstore-js signs the images of the signature
# policy's end-to-end test (tests/e2e/policy.rs) as cosign does. Node.js 20 and npm come with the
# machine (Debian's own nodejs is 18, too old for these releases). `npm ci` runs again only when the
# lock file changed since the last install (a copy is kept in node_modules).
sigstore_dir="$(dirname "$0")/sigstore"
if ! node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || ((node_major < 20)); then
    echo "install-deps: Node.js 20 or later is needed for $sigstore_dir (found: $(node --version 2>&1))" >&2
    exit 1
fi
if ! cmp -s "$sigstore_dir/package-lock.json" "$sigstore_dir/node_modules/.berth-installed-lock.json"; then
    log=$(mktemp /tmp/berth-install-deps.XXXXXX.log)
    echo "install-deps: installing sigstore-js into $sigstore_dir/node_modules (npm ci)"
    if ! (cd "$sigstore_dir" && npm ci --no-audit --no-fund) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "install-deps: npm ci failed; full log in $log" >&2
        exit 1
    fi
    rm -f "$log"
    cp "$sigstore_dir/package-lock.json" "$sigstore_dir/node_modules/.berth-installed-lock.json"
fi

# cargo-mutants and cargo-nextest (crates.io) for tests/mutants.sh; pinned, as a new release may
# mutate differently. About 2 minutes each to build, once.
cargo_tools=("cargo-mutants 27.1.0" "cargo-nextest 0.9.143")
for t in "${cargo_tools[@]}"; do
    read -r name version <<<"$t"
    if [[ $("$name" "${name#cargo-}" --version 2>/dev/null | head -n1) != "$name $version"* ]]; then
        log=$(mktemp /tmp/berth-install-deps.XXXXXX.log)
        echo "install-deps: installing $name $version (cargo install --locked)"
        if ! cargo install --locked --quiet "$name" --version "$version" >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "install-deps: cargo install $name failed; full log in $log" >&2
            exit 1
        fi
        rm -f "$log"
    fi
done

for c in "${commands[@]}"; do
    if ! command -v "$c" >/dev/null; then
        echo "install-deps: '$c' is still not on PATH after installing" >&2
        exit 1
    fi
done
