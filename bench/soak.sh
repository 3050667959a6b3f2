#!/usr/bin/env bash
# Soak: decisions through the gateway at half the maximum rate for SOAK_MINUTES, on a
# release-built local cluster, one line per minute with that minute's rate, p50/p99/max latency
# and errors, and the resident memory of the gateway and each node, so flat (or growing) memory
# and latency show. A benchmark, not a test: CI does not run it. BENCHMARKS.md has the figures.
#
# Usage: bench/soak.sh
# Environment (defaults in brackets):
#   SOAK_MINUTES [30]       how long
#   LOAD_SUBJECTS [20000]   subjects set up through the gateway first
#   LOAD_CONCURRENCY [256]  concurrent callers
#   CLUSTER_ARGS            extra `cluster up` arguments, e.g. `--store postgres`
set -euo pipefail

cd "$(dirname "$0")/.."
SOAK_MINUTES="${SOAK_MINUTES:-30}"
LOAD_SUBJECTS="${LOAD_SUBJECTS:-20000}"
LOAD_CONCURRENCY="${LOAD_CONCURRENCY:-256}"

echo "== machine: $(nproc) vCPUs, $(date -u +%Y-%m-%dT%H:%MZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
start_release_cluster

"$domicile" load setup --cluster-dir "$dir" --subjects "$LOAD_SUBJECTS" >/dev/null
max="$("$domicile" load decide --cluster-dir "$dir" --subjects "$LOAD_SUBJECTS" --duration 10 \
  --concurrency "$LOAD_CONCURRENCY" --json)"
half="$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["scenarios"]["decide"]["ops_per_sec"] / 2))' <<<"$max")"
echo "== maximum decide rate measured over 10 s; soaking at half: $half/s for $SOAK_MINUTES min"

rss() {
  python3 - "$dir/supervisor.json" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
out = []
for p in state.get("gateways", []) + state.get("nodes", []):
    pid = p.get("pid")
    try:
        kib = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    except Exception:
        kib = -1
    out.append(f"{p['name']}={kib // 1024}MB")
print(" ".join(out))
PY
}

echo "minute rate/s p50_us p99_us max_us errors memory"
for minute in $(seq 1 "$SOAK_MINUTES"); do
  line="$("$domicile" load decide --cluster-dir "$dir" --subjects "$LOAD_SUBJECTS" --duration 60 \
    --concurrency "$LOAD_CONCURRENCY" --rate "$half" --no-echo --json 2>/dev/null)"
  stats="$(python3 -c '
import json, sys
d = json.load(sys.stdin)["scenarios"]["decide"]
l = d["latency"]
print(d["ops_per_sec"], l["p50_us"], l["p99_us"], l["max_us"], d["errors"])' <<<"$line")"
  echo "$minute $stats $(rss)"
done
