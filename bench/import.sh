#!/usr/bin/env bash
# Bulk import throughput (issue 22): `domicile import` of a generated Domicile NDJSON file into a
# release-built local three-region cluster, measured beside one RecordConsent call per record
# through the same gateway (`domicile load writes`) in the same run.
#
# Usage: bench/import.sh
# Environment (defaults in brackets):
#   IMPORT_ROWS [200000]      rows per file
#   IMPORT_SUBJECTS [20000]   distinct subjects (spread over DE, US and BR: three regions)
#   IMPORT_BATCH [2000]       rows per batch (one ImportConsent call unless over 960 KiB)
#   IMPORT_IN_FLIGHT [8]      calls in flight
#   IMPORT_GROUP [32]         batches read ahead and grouped by person (`--group`)
#   IMPORT_LONG_ROWS [5000000]      rows of the long file the importer's memory is measured over
#   IMPORT_LONG_SUBJECTS [1000000]  its distinct subjects (new ones)
#   LOAD_DURATION [10]        seconds of the one-call-per-record baseline
#   LOAD_CONCURRENCY [256]    its concurrent callers
#   CLUSTER_ARGS              extra `cluster up` arguments, e.g. `--store postgres`
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/cluster.sh

rows="${IMPORT_ROWS:-200000}"
subjects="${IMPORT_SUBJECTS:-20000}"
echo "== machine: $(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(date -u +%Y-%m-%dT%H:%MZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
start_release_cluster
work="$(mktemp -d)"
trap 'stop_release_cluster; rm -rf "$work"' EXIT

# Two files over the same subjects: the first registers them, the second finds them registered.
python3 - "$rows" "$subjects" "$work" <<'PY'
import sys
rows, subjects, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
places = ["DE", "US", "BR"]
for part in (1, 2):
    with open(f"{work}/part{part}.ndjson", "w") as f:
        for n in range(rows):
            s = n % subjects
            day, sec = divmod(n // subjects + part * 1000, 86400)
            action = "withdraw" if (n // subjects) % 5 == 4 else "grant"
            f.write('{"source_system":"bench","source_event_id":"p%d-e%d","identifiers":[{"kind":"email","value":"import%d@example.com"}],"jurisdiction":"%s","purpose":"marketing","channels":["email"],"action":"%s","captured_at":"2025-%02d-%02dT%02d:%02d:%02dZ"}\n'
                    % (part, n, s, places[s % 3], action, 1 + (n // subjects) % 12, 1 + part, (sec // 3600) % 24, (sec // 60) % 60, sec % 60))
with open(f"{work}/mapping.toml", "w") as f:
    # NDJSON rows name Domicile purposes directly; the file still needs one mapping entry.
    f.write('version = "bench-1"\n[[purpose]]\nsource = "*"\nkey = "marketing"\nmaps_to = "marketing"\nchannels = ["email"]\n')
PY

run_import() {
  local part="$1"
  local start end
  start=$(date +%s.%N)
  "$domicile" import --cluster-dir "$dir" --format ndjson --mapping "$work/mapping.toml" \
    --receipts "$work/receipts$part.ndjson" --batch "${IMPORT_BATCH:-2000}" --in-flight "${IMPORT_IN_FLIGHT:-8}" --group "${IMPORT_GROUP:-32}" \
    --quiet "$work/part$part.ndjson" 2>"$work/import$part.log" || { cat "$work/import$part.log"; exit 1; }
  end=$(date +%s.%N)
  local accepted
  accepted=$(grep -c '"status":"accepted"' "$work/receipts$part.ndjson" || true)
  python3 -c "import sys; r=int(sys.argv[1]); t=float(sys.argv[3])-float(sys.argv[2]); print(f'import part {sys.argv[4]}: {r} rows accepted in {t:.1f} s = {r/t:,.0f} rows/s')" "$accepted" "$start" "$end" "$part"
  tail -1 "$work/import$part.log"
}

echo "== domicile import, subjects not yet registered (registration included)"
run_import 1
echo "== domicile import, subjects already registered"
run_import 2
echo "== baseline: one RecordConsent call per record through the gateway (domicile load writes)"
"$domicile" load setup --cluster-dir "$dir" --subjects 10000 >/dev/null 2>&1
"$domicile" load writes --cluster-dir "$dir" --subjects 10000 --duration "${LOAD_DURATION:-10}" \
  --concurrency "${LOAD_CONCURRENCY:-256}" 2>&1 | grep -iE "writes|/s" | tail -4
echo "== memory: the importer's peak RSS over part 1 again (all duplicates) and over a long file"
# The long file: IMPORT_LONG_ROWS rows over IMPORT_LONG_SUBJECTS new subjects (every subject's
# entries spread over the file, as an export sorted by time has them), written as it is generated.
python3 - "$work" "${IMPORT_LONG_ROWS:-5000000}" "${IMPORT_LONG_SUBJECTS:-1000000}" <<'PY'
import sys
work, rows, subjects = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
places = ["DE", "US", "BR"]
with open(f"{work}/long.ndjson", "w") as f:
    for n in range(rows):
        s = n % subjects
        k = n // subjects
        action = "withdraw" if k % 5 == 4 else "grant"
        f.write('{"source_system":"bench","source_event_id":"l-e%d","identifiers":[{"kind":"email","value":"long%d@example.com"}],"jurisdiction":"%s","purpose":"marketing","channels":["email"],"action":"%s","captured_at":"2024-%02d-%02dT%02d:%02d:%02dZ"}\n'
                % (n, s, places[s % 3], action, 1 + k % 12, 1 + k % 28, (s // 3600) % 24, (s // 60) % 60, s % 60))
PY
echo "long file: $(wc -l <"$work/long.ndjson") rows, $(du -h "$work/long.ndjson" | cut -f1)"
for file in part1 long; do
  status=0
  /usr/bin/time -o "$work/time-$file" -f "$file: peak RSS %M KiB, %e s" "$domicile" import --cluster-dir "$dir" \
    --format ndjson --mapping "$work/mapping.toml" --receipts "$work/mem-$file.ndjson" \
    --batch "${IMPORT_BATCH:-2000}" --in-flight "${IMPORT_IN_FLIGHT:-8}" --group "${IMPORT_GROUP:-32}" --quiet "$work/$file.ndjson" \
    2>"$work/mem-$file.log" || status=$?
  cat "$work/time-$file"
  echo "  exit $status: $(tail -1 "$work/mem-$file.log")"
done
echo "nodes' RSS after the long file (KiB): $(for p in $(pgrep -f 'domicile node'); do awk '/VmRSS/ {print $2}' /proc/$p/status; done | xargs)"
