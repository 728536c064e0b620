#!/usr/bin/env bash
# The proof that the `it` integration binary does not flake on a busy machine (issue 20): it runs
# the binary RUNS times in a row (default 20) while stress-ng keeps every core busy, and says how
# many runs passed. It stops at nothing: every run is counted, and each failing run's output is
# kept in target/under-load/run-K.log. Exits non-zero if any run failed.
#
#   tests/under-load.sh [RUNS] [-- test binary args]     e.g. tests/under-load.sh 20
#   STRESS='--cpu 4 --io 1' tests/under-load.sh 5        another load (stress-ng's options)
#
# The default load is one CPU hog per core plus one more (`--cpu N+1`): the test binary's own
# threads then always wait for a core, which is where races between a server's clock and a
# client's show. It runs the binary the way `cargo test --test it` does (the suites marked
# #[ignore] need root, tmpfs or Ceph, and have their own steps in tests/run.sh), not under
# nextest: one process, its tests in parallel threads, as CI runs it. For occasional use, not a
# CI step: 20 runs take 15 to 40 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=20
if [[ $# -gt 0 && $1 != -- ]]; then
    runs=$1
    shift
fi
[[ ${1:-} == -- ]] && shift

if ! command -v stress-ng >/dev/null; then
    apt-get install -y -q stress-ng >/dev/null
fi

cargo test --test it --no-run
bin=$(cargo test --test it --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])')
[[ -x $bin ]] || { echo "under-load: no it binary found" >&2; exit 2; }

out=target/under-load
mkdir -p "$out"
rm -f "$out"/run-*.log
# shellcheck disable=SC2206
stress=(${STRESS:---cpu $(($(nproc) + 1))})
stress-ng "${stress[@]}" --timeout 0 --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null || true' EXIT

echo "under-load: $runs runs of $bin under stress-ng ${stress[*]} ($(nproc) cores)"
passed=0
failed=0
start=$(date +%s)
for k in $(seq 1 "$runs"); do
    t0=$(date +%s)
    if "$bin" "$@" >"$out/run-$k.log" 2>&1; then
        passed=$((passed + 1))
        rm -f "$out/run-$k.log"
        verdict=passed
    else
        failed=$((failed + 1))
        verdict="FAILED ($(grep -E '^    [a-z_:]+$' "$out/run-$k.log" | tr -d ' ' | paste -sd, -); $out/run-$k.log)"
    fi
    echo "run $k/$runs: $verdict in $(($(date +%s) - t0)) s, load $(cut -d' ' -f1 /proc/loadavg)"
done
echo "under-load: $passed passed, $failed failed, of $runs runs in $(($(date +%s) - start)) s"
((failed == 0))
