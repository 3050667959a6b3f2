#!/bin/sh
# Runs every fuzz target for a set time and prints the figures (FUZZING.md).
#
#   tools/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Each parser crate's `tests/fuzz.rs` is built in release mode and run with
# DOMICILE_FUZZ_SECS set; each target replays its corpus (`<crate>/tests/fuzz-corpus/<target>/`),
# then fuzzes until its time is spent. Environment: DOMICILE_FUZZ_CASES (cases per proptest
# round, default 256), FUZZ_THREADS (targets run at once, default 2), CARGO_TARGET_DIR as usual.
# Exits non-zero if any target found anything; the minimised inputs are in the log above the table.
set -u

secs="${1:-60}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 64 ;;
esac
threads="${FUZZ_THREADS:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
log="$(mktemp "${TMPDIR:-/tmp}/domicile-fuzz.XXXXXX")"
trap 'rm -f "$log"' EXIT

cd "$root" || exit 1
echo "fuzzing every target for ${secs}s (${threads} at a time); log: $log" >&2
status=0
# One crate at a time, so that a crate that does not build leaves the others' figures.
for crate in types policy runtime audit proto; do
    DOMICILE_FUZZ_SECS="$secs" cargo test --release -p "domicile-$crate" --test fuzz -- \
        --nocapture --test-threads "$threads" >"$log.$crate" 2>&1
    # (POSIX sh has no pipefail: the log tells whether the build or a target failed.)
    cat "$log.$crate"
    cat "$log.$crate" >>"$log"
    grep -q -E '^test result: FAILED|^error(\[|:)' "$log.$crate" && status=1
    rm -f "$log.$crate"
done

echo
printf '%-24s %14s %9s\n' target inputs findings
printf '%-24s %14s %9s\n' ------------------------ -------------- ---------
# Lines `fuzz <target>: <N> inputs, <F> findings`, printed by tools/fuzz/engine.rs.
grep -E '^fuzz [A-Za-z0-9_]+: [0-9]+ inputs, [0-9]+ findings' "$log" | sort |
    awk '{ t = $2; sub(":", "", t); printf "%-24s %14s %9s\n", t, $3, $5; n += $3; f += $5 }
         END { printf "%-24s %14s %9s\n", "total", n + 0, f + 0 }'
exit "$status"
