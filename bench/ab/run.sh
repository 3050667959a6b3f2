#!/usr/bin/env bash
# Benchmarks of two builds side by side in one run, as BENCHMARKS.md compares them:
#   bench/ab/run.sh <previous commit> [current commit, default HEAD] [rounds, default 4]
# Both builds get a worktree and a release target of their own under $AB_DIR (default
# /tmp/domicile-ab); then, round after round, every bench runs once per side, back to back, the
# side that goes first alternating between rounds (ABBA), so a drift of the machine's speed
# affects both sides alike. Results: $AB_DIR/results/round-N/<side>-<bench>.txt; the table at the
# end comes from compare.py. Benches: policy (vs Cedar), node (100,000 subjects), cold (gateway
# cold start, 1,000,000 links), load (domicile load all against a fresh local cluster).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
prev=${1:?usage: bench/ab/run.sh <previous commit> [current commit] [rounds]}
cur=${2:-HEAD}
rounds=${3:-4}
AB_DIR=${AB_DIR:-/tmp/domicile-ab}
mkdir -p "$AB_DIR/results"

build() { # side commit
  local side=$1 commit=$2 wt="$AB_DIR/wt-$1"
  [[ -d "$wt" ]] || git -C "$repo" worktree add --detach "$wt" "$commit" >/dev/null
  git -C "$wt" checkout -q --detach "$commit"
  export CARGO_TARGET_DIR="$AB_DIR/target-$side"
  (cd "$wt" && cargo build --release --locked -p domicile-cli --bins >&2)
  (cd "$wt" && cargo bench --locked --no-run -p domicile-policy --bench decide -p domicile-node --bench node \
      -p domicile-cluster-tests --bench gateway_cold_start --message-format=json) \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
' > "$AB_DIR/bins-$side.txt"
}

side() { # side bench outfile
  local side=$1 bench=$2 out=$3 wt="$AB_DIR/wt-$1"
  bin() { awk -v n="$1" '$1==n{print $2}' "$AB_DIR/bins-$side.txt"; }
  {
    echo "## side=$side bench=$bench commit=$(git -C "$wt" rev-parse --short HEAD) start=$(date -u +%FT%TZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
    case $bench in
      policy) (cd "$wt/policy" && BENCH_SECS=3 "$(bin decide)" --bench --noplot) ;;
      node) (cd "$wt/node" && BENCH_SUBJECTS=100000 BENCH_SECS=3 "$(bin node)" --bench) ;;
      cold) (cd "$wt/tests" && BENCH_LINKS=1000000 "$(bin gateway_cold_start)" --bench) ;;
      load) (cd "$wt" && CARGO_TARGET_DIR="$AB_DIR/target-$side" SKIP_COMPONENT_BENCHES=1 LOAD_SUBJECTS=20000 \
               LOAD_DURATION=5 LOAD_CONCURRENCY=256 bench/run-all.sh --json) ;;
    esac
    echo "## rc=$? end=$(date -u +%FT%TZ) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$out" 2>&1
}

build prev "$prev"
build cur "$(git -C "$repo" rev-parse "$cur")"
for r in $(seq 1 "$rounds"); do
  dir="$AB_DIR/results/round-$r"; mkdir -p "$dir"
  if (( r % 2 )); then order="prev cur"; else order="cur prev"; fi
  echo "round $r $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for bench in policy node cold load; do
    for s in $order; do side "$s" "$bench" "$dir/$s-$bench.txt"; done
  done
done
python3 "$repo/bench/ab/compare.py" "$AB_DIR/results"
