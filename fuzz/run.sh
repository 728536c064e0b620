#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, starting from the seeds committed in fuzz/seeds/<target>
# (what CI runs from tests/run.sh). FUZZ_SECONDS per target (default 15; eight targets, so about
# two minutes plus the build). New inputs go to a scratch corpus that is thrown away, so the
# checkout stays clean; a crash stops the run with a non-zero exit, its input saved under
# fuzz/artifacts/<target>/ (replay it: cargo +nightly fuzz run <target> <file>). Turn a crash into a
# regression unit test next to the code it broke, then fix it.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-15}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz/run.sh: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

scratch=$(mktemp -d /tmp/berth-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# --dev: the dev profile, so debug assertions and overflow checks are on (an arithmetic overflow
# is a crash too), and the build takes about half the time of a release one (2.7 min against
# about 5 on two cores): CI's short runs are smoke tests; a long hunt can use -O -a instead.
cargo +nightly fuzz build --dev
for target in $(cargo +nightly fuzz list); do
    echo "==> fuzz $target for ${secs}s"
    mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
    log="$scratch/$target.log"
    if ! cargo +nightly fuzz run --dev "$target" "$scratch/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz/run.sh: $target crashed; input under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(INFO: seed corpus|#[0-9]+ +DONE|stat::number_of_executed_units)' "$log" || true
done
echo "fuzz/run.sh: all targets ran ${secs}s without a crash"
