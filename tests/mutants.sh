#!/usr/bin/env bash
# Mutation testing of the files that hold berth's promises, with cargo-mutants (crates.io; installed
# by tests/install-deps.sh). Each mutant (a deliberate small breakage: a condition negated, a
# function returning a default) is built and the unit tests plus the `it` integration binary are
# run against it (with nextest, stopping at the first failure); a mutant no test catches is a
# survivor. The run fails on a survivor not listed, with its reason, in tests/mutants-equivalent.txt.
#
#   tests/mutants.sh --full [cargo-mutants args]   every mutant of the files below (about 640;
#                                                  30 to 90 s each on 2 busy shared cores, so
#                                                  most of a working day: for occasional use,
#                                                  under `nice -n 19`, a few files at a time;
#                                                  then record HEAD in tests/mutants-base)
#                                                  MUTANTS_FILES="a.rs b.rs" runs only those of
#                                                  the files (then record `HEAD a.rs` lines);
#                                                  MUTANTS_TESTS='<nextest filter>' narrows the
#                                                  tests each mutant runs, MUTANTS_TARGETS=--lib
#                                                  the binaries it builds (a survivor must then
#                                                  be run again without them: `-F <its regex>`)
#   tests/mutants.sh --ci [BASE] [cargo-mutants args]
#                                                  only the mutants in lines of these files changed
#                                                  since BASE (default: each file's commit in
#                                                  tests/mutants-base: its own line, else the
#                                                  first line, the last full run of them all)
#
# Either takes cargo-mutants' own options after the mode (`--in-place` mutates this tree instead of
# a copy: what CI does, on its throwaway checkout, with its target/ already built; cargo-mutants'
# copy does not keep file times, so a copy builds every dependency again first, about 3 minutes).
# A timed-out mutant counts as caught: it made the tests hang, so they did not pass. The per-test
# command runs the `#[ignore]`d suites that guard these files too (`dns::` needs root and network
# namespaces, `enospc::` a tmpfs): run as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."

# The invariant files, in one place.
files=(
    # The commit and its digest check; the fill that streams, verifies and commits.
    src/store/pending.rs
    src/fill/job.rs
    # Reads, and the hold-back of a fill's last byte until the digest checked.
    src/store/read.rs
    # Single-flight, and which running fill a request may share.
    src/flight.rs
    src/fill/mod.rs
    # "May this upstream serve this digest?" (upstream isolation).
    src/origins/check.rs
    # The SSRF guard, the client's resolver wiring, the redirect loop, the token realm check.
    src/upstream/guard.rs
    src/upstream/connect.rs
    src/upstream/redirect.rs
    src/upstream/auth/mod.rs
    # Peer authentication in a cluster (the HMAC proof).
    src/cluster/auth.rs
    # The signature policy: the verifier (tag-scheme signatures, bundles, keys, keyless) and where
    # the mirror enforces its verdict.
    src/policy/mod.rs
    src/policy/verdicts.rs
    src/policy/cosign.rs
    src/policy/bundle.rs
    src/policy/keys.rs
    src/policy/keyless/mod.rs
    src/policy/keyless/cert.rs
    src/mirror/policy.rs
    # Rekor's inclusion proofs and promises, the trusted root, certificate transparency (SCTs).
    src/policy/keyless/rekor.rs
    src/policy/keyless/root.rs
    src/policy/keyless/sct.rs
)
# Of src/upstream/auth/mod.rs only the realm check and where credentials may go are invariants:
# the token flow itself is not mutated here.
exclude_re='^src/upstream/auth/mod\.rs:.*(in |replace )(Upstream::(answer|token|fetch_token|authorization|proactive_auth)|challenges|basic_auth)( |$)'

equivalent=tests/mutants-equivalent.txt
base_file=tests/mutants-base
out=${MUTANTS_OUT:-target/mutants}

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

if [[ -n ${MUTANTS_FILES:-} ]]; then
    read -r -a only <<<"$MUTANTS_FILES"
    for f in "${only[@]}"; do
        [[ " ${files[*]} " == *" $f "* ]] || { echo "mutants: $f is not an invariant file" >&2; exit 2; }
    done
    files=("${only[@]}")
fi

# The commit a file's mutants were last all run at: its own line in the base file, else the first.
file_base() {
    local own
    own=$(grep -v '^#' "$base_file" | awk -v f="$1" 'NF == 2 && $2 == f { print $1 }' | tail -n1)
    if [[ -n $own ]]; then echo "$own"; else grep -v '^#' "$base_file" | head -n1 | awk '{ print $1 }'; fi
}

mode=${1:-}
shift || true
scope=()
case "$mode" in
--full)
    # The unmutated tree first: were its tests failing, every mutant would count as caught.
    scope=(--baseline=run)
    ;;
--ci)
    given=
    if [[ $# -gt 0 && $1 != -* ]]; then
        given=$1
        shift
    fi
    # A shallow clone may not hold a base: then fall back to main's merge base, then to the
    # parent commit, and say so; with none of them, fail rather than pass unchecked.
    fallback=
    for candidate in "$(git merge-base HEAD origin/main 2>/dev/null)" "$(git rev-parse -q --verify 'HEAD^' 2>/dev/null)"; do
        if [[ -n $candidate ]]; then
            fallback=$candidate
            break
        fi
    done
    mkdir -p "$out"
    diff="$out/ci.diff"
    : >"$diff"
    for f in "${files[@]}"; do
        base=${given:-$(file_base "$f")}
        if ! git cat-file -e "$base^{commit}" 2>/dev/null; then
            if [[ -z $fallback ]]; then
                # A checkout without history (depth 1, or no .git) cannot say what changed: nothing
                # to mutate is known, which is said loudly rather than failing every such CI run.
                echo "mutants: SKIPPED: no base commit in this checkout's history (shallow clone?)." \
                    "Nothing is known to have changed; fetch history or run tests/mutants.sh --full." >&2
                exit 0
            fi
            echo "mutants: base $base of $f is not in this clone's history; falling back to $fallback" >&2
            base=$fallback
        fi
        changed=$(git diff --stat "$base...HEAD" -- "$f" | tail -n1)
        if [[ -n $changed ]]; then
            echo "mutants: $f changed since ${base:0:12}:$changed"
            git diff "$base...HEAD" -- "$f" >>"$diff"
        fi
    done
    if [[ ! -s $diff ]]; then
        echo "mutants: no invariant file changed since its last full run"
        exit 0
    fi
    scope=(--in-diff "$diff" --baseline=skip)
    ;;
*) usage ;;
esac

# A copy of the tree gets this one's target/ (else it builds every dependency again); in place, the
# tree's own target/ serves.
where=(--copy-target=true)
for a in "$@"; do
    if [[ $a == --in-place ]]; then
        where=()
    fi
done

file_args=()
for f in "${files[@]}"; do
    file_args+=(-f "$f")
done

# CI keeps its mutants step to a few minutes (20 to 30 s a mutant): a change bigger than this asks
# for a full run, recorded in tests/mutants-base, rather than a long CI.
if [[ $mode == --ci ]]; then
    listed=$(cargo mutants --list "${file_args[@]}" --exclude-re "$exclude_re" --in-diff "$diff")
    n=$(grep -c . <<<"$listed" || true)
    max=${MUTANTS_CI_MAX:-20}
    echo "mutants: $n mutants in the changed lines"
    if ((n == 0)); then
        exit 0
    fi
    if ((n > max)); then
        echo "mutants: more than $max: run tests/mutants.sh --full (about 2.5 hours), then record its" \
            "commit in $base_file" >&2
        exit 1
    fi
fi

# The test binaries each mutant builds: the library's and `it`, or MUTANTS_TARGETS (`--lib`
# alone for a file whose unit tests are its guard: half the build per mutant).
targets=()
for t in ${MUTANTS_TARGETS:---lib --test=it}; do
    targets+=("--cargo-arg=$t")
done

mkdir -p "$out"
start=$(date +%s)
set +e
cargo mutants \
    "${file_args[@]}" --exclude-re "$exclude_re" "${scope[@]}" \
    --test-tool=nextest "${where[@]}" \
    --timeout "${MUTANTS_TIMEOUT:-180}" --build-timeout "${MUTANTS_BUILD_TIMEOUT:-900}" \
    "${targets[@]}" \
    --output "$out" "$@" \
    -- --run-ignored all --no-tests=pass \
    -E "${MUTANTS_TESTS:-kind(lib) | (binary(it) & not test(/^(s3|container|observability)::/))}"
status=$?
set -e
elapsed=$(($(date +%s) - start))
results="$out/mutants.out"
# 0: all caught; 2: survivors; 3: timeouts (a hang is caught: the tests did not pass).
if [[ $status -ne 0 && $status -ne 2 && $status -ne 3 ]]; then
    echo "mutants: cargo mutants failed (exit $status)" >&2
    exit "$status"
fi

mkdir -p "$results"
touch "$results/missed.txt"
count() { if [[ -f $results/$1 ]]; then grep -c . "$results/$1" || true; else echo 0; fi; }
# A mutant's name without its line and column, which move with every edit above it.
strip() { sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /'; }
known=$({ grep -v -e '^#' -e '^$' "$equivalent" || true; } | sed -E 's/ +# .*$//' | sort -u)
new=$(strip <"$results/missed.txt" | sort -u | comm -23 - <(echo "$known"))
equivalent_seen=$(strip <"$results/missed.txt" | sort -u | comm -12 - <(echo "$known") | grep -c . || true)

echo "mutants: caught $(count caught.txt), survived $(count missed.txt) (equivalent $equivalent_seen)," \
    "timed out $(count timeout.txt), unviable $(count unviable.txt), in ${elapsed}s"
if [[ -n $new ]]; then
    echo "mutants: survivors that no test catches and $equivalent does not list:" >&2
    echo "$new" | sed 's/^/  /' >&2
    echo "mutants: add a test that catches each (in a suite CI runs), or a line with its reason to $equivalent" >&2
    exit 1
fi
