#!/usr/bin/env bash
# The one test command (the README gives it; CI runs it through .ci/run):
# dependencies, the Kubernetes manifests (deploy/kubernetes/), formatting, lints, unit +
# integration tests, the end-to-end suite with real clients, a short fuzz run of the parsers, the
# benches compiled and run once each (by `cargo test --all-targets`, in the test profile: a
# release build of them only for `--no-run` cost CI 7 minutes), and mutation testing of the
# invariant files a change touched (tests/mutants.sh). Stops at the first failure, with a non-zero
# exit.
# The end-to-end tests start containerd and dockerd, so run this as root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "tests/install-deps.sh"
bash tests/install-deps.sh

# The venv install-deps.sh put kubernetes-validate in has PyYAML, which tests/kubernetes.py needs.
k8s_python="$(dirname "$(readlink -f "$(command -v kubernetes-validate)")")/python"

step "Kubernetes manifests: tests/kubernetes.py validate (kubernetes-validate --strict)"
"$k8s_python" tests/kubernetes.py validate

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets"
cargo test --all-targets

step "Kubernetes ConfigMap: each pod's config.toml through berth check-config; the checks' selftest"
"$k8s_python" tests/kubernetes.py config --berth target/debug/berth
"$k8s_python" tests/kubernetes.py selftest --berth target/debug/berth

step "end-to-end: cargo test --test e2e -- --ignored"
cargo test --test e2e -- --ignored --test-threads=1

step "full disk on a tmpfs: cargo test --test it enospc:: -- --ignored"
cargo test --test it enospc:: -- --ignored

step "SSRF through DNS, each test in its own network namespace: cargo test --test it dns:: -- --ignored"
cargo test --test it dns:: -- --ignored

# Prints SKIPPED and the reason where namespaces cannot be made (not root, no ip/tc).
step "fleet test bed, 3 node berths in network namespaces behind capped links: cargo test --test it fleet_bed:: -- --ignored"
cargo test --test it fleet_bed:: -- --ignored --nocapture

step "bucket tier against Ceph radosgw: cargo test --test it s3:: / --test cluster_s3 -- --ignored"
cargo test --test it --test cluster_s3 --no-run
ceph_dir=$(mktemp -d /tmp/berth-ceph.XXXXXX)
trap 'CEPH_DIR="$ceph_dir" bash tests/ceph/stop-ceph.sh; rm -rf "$ceph_dir"' EXIT
rgw_port=${BERTH_RGW_PORT:-19103}
CEPH_DIR="$ceph_dir" RGW_PORT="$rgw_port" MON_PORT="${BERTH_CEPH_MON_PORT:-13300}" bash tests/ceph/start-ceph.sh
BERTH_TEST_S3="http://127.0.0.1:$rgw_port" cargo test --test it s3:: -- --ignored
# Three real berth processes over the bucket (one test at a time: the first moves 8 GiB).
BERTH_TEST_S3="http://127.0.0.1:$rgw_port" cargo test --test cluster_s3 -- --ignored --test-threads=1
CEPH_DIR="$ceph_dir" bash tests/ceph/stop-ceph.sh
rm -rf "$ceph_dir"
trap - EXIT

step "dashboard and alerts with promtool and a real Prometheus: cargo test --test it observability:: -- --ignored"
cargo test --test it observability:: -- --ignored

step "container image built and run with podman: cargo test --test it container:: -- --ignored"
cargo test --test it container:: -- --ignored

step "header floods: resident memory comes back after each of 3 floods of 10,000 half-sent heads"
python3 benches/load/flood.py --berth target/debug/berth --connections 10000 --rounds 3 \
    --settle 10 --header-timeout 2s --max-connections 20000 --max-growth 8

step "bench harnesses parse: bash -n benches/load/run.sh; python3 compile of benches/load/*.py"
bash -n benches/load/run.sh
python3 -c 'import sys; [compile(open(f).read(), f, "exec") for f in sys.argv[1:]]' benches/load/*.py

step "fuzz: fuzz/run.sh (each parser target for 15 s)"
FUZZ_SECONDS=15 bash fuzz/run.sh

# Last: it mutates this checkout's sources in place (restoring each) and rebuilds berth for each.
step "mutation testing of the invariant files changed since the last full run: tests/mutants.sh --ci --in-place"
MUTANTS_TIMEOUT=120 bash tests/mutants.sh --ci --in-place

step "all passed"
