#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md: the policy evaluation bench (vs Cedar), the regional
# node bench (durable writes, decision latency), the import floor (a region's import vs sled
# alone) and the load tool against a release-built local cluster (echo baseline, decide, batch,
# writes, withdrawal -> watcher, dataset setup).
#
# Usage (from anywhere in the repository):
#   bench/run-all.sh
# Environment (defaults in brackets):
#   BENCH_SECS [3]            criterion measurement time per benchmark
#   BENCH_SUBJECTS [1000000]  subjects stored for the node decision bench
#   BENCH_LINKS [1000000]     links in the node behind the gateway cold-start bench
#   LOAD_SUBJECTS [100000]    subjects the load tool sets up through the gateway
#   LOAD_DURATION [5]         seconds per timed load scenario
#   LOAD_CONCURRENCY [1024]   concurrent callers for the load tool (decide needs many: see BENCHMARKS.md)
#   LOAD_WITHDRAWALS [1000]   withdrawals for the propagation / read-your-writes check
#   SKIP_COMPONENT_BENCHES    set to 1 to run only the load tool
#   CLUSTER_ARGS              extra `cluster up` arguments, e.g. `--node-worker-threads 0`
#   CARGO_TARGET_DIR          honoured: the load tool runs the binary built there
# With CLUSTER_ARGS="--store postgres", the PostgreSQL + Cedar baseline (bench/baseline) is then
# measured with the same load tool and settings.
set -euo pipefail

cd "$(dirname "$0")/.."
export BENCH_SECS="${BENCH_SECS:-3}"
LOAD_SUBJECTS="${LOAD_SUBJECTS:-100000}"
LOAD_DURATION="${LOAD_DURATION:-5}"
LOAD_CONCURRENCY="${LOAD_CONCURRENCY:-1024}"
LOAD_WITHDRAWALS="${LOAD_WITHDRAWALS:-1000}"

echo "== machine: $(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(date -u +%Y-%m-%dT%H:%MZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(rustc --version)"

if [[ "${SKIP_COMPONENT_BENCHES:-0}" != 1 ]]; then
  echo "== policy evaluation vs Cedar"
  cargo bench -p domicile-policy --bench decide
  echo "== regional node: durable writes and decision latency"
  BENCH_SUBJECTS="${BENCH_SUBJECTS:-1000000}" cargo bench -p domicile-node --bench node
  echo "== import into one region vs sled's own floor for the same rows"
  cargo bench -p domicile-node --bench import_floor
  echo "== gateway cold start with a large directory"
  BENCH_LINKS="${BENCH_LINKS:-1000000}" cargo bench -p domicile-cluster-tests --bench gateway_cold_start
  echo "== gateway directory memory per link"
  cargo test -p domicile-gateway --release directory::tests::a_million_links -- --nocapture
fi

echo "== load tool through gateway and nodes"
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
start_release_cluster

"$domicile" load all --cluster-dir "$dir" \
  --subjects "$LOAD_SUBJECTS" --duration "$LOAD_DURATION" \
  --concurrency "$LOAD_CONCURRENCY" --withdrawals "$LOAD_WITHDRAWALS" "$@"

# Issue 19's baseline, for PostgreSQL runs: a consent table in PostgreSQL read per request plus
# Cedar on the same rules (bench/baseline), driven by the same load tool with the same dataset
# size, duration and concurrency, after the Domicile cluster has stopped.
if [[ "${CLUSTER_ARGS:-}" == *postgres* ]]; then
  stop_release_cluster
  echo "== baseline: PostgreSQL consent table read per request + Cedar (bench/baseline)"
  cargo build --release -p domicile-baseline
  baseline_dir="$(mktemp -d)"
  "${CARGO_TARGET_DIR:-target}/release/domicile-baseline" --dir "$baseline_dir" --subjects "$LOAD_SUBJECTS" \
    --packs policy-packs >"$baseline_dir/baseline.log" 2>&1 &
  baseline_pid=$!
  trap 'kill -TERM "$baseline_pid" 2>/dev/null || true; wait "$baseline_pid" 2>/dev/null || true; rm -rf "$baseline_dir"' EXIT
  for _ in $(seq 1 240); do
    [[ -f "$baseline_dir/cluster.json" ]] && break
    kill -0 "$baseline_pid" 2>/dev/null || { cat "$baseline_dir/baseline.log" >&2; exit 1; }
    sleep 0.5
  done
  max="$("$domicile" load decide --cluster-dir "$baseline_dir" --subjects "$LOAD_SUBJECTS" \
    --duration "$LOAD_DURATION" --concurrency "$LOAD_CONCURRENCY" --json)"
  echo "$max"
  half="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["scenarios"]["decide"]["ops_per_sec"] / 2)' <<<"$max")"
  "$domicile" load decide --cluster-dir "$baseline_dir" --subjects "$LOAD_SUBJECTS" \
    --duration "$LOAD_DURATION" --concurrency "$LOAD_CONCURRENCY" --rate "$half"
fi
