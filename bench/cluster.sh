# Sourced by the bench scripts: builds the release CLI and starts a local cluster for them.
# After `start_release_cluster`, `$domicile` is the binary and `$dir` the cluster directory; the
# cluster stops and the directory goes when the script exits. CLUSTER_ARGS: extra `cluster up`
# arguments (e.g. `--store postgres`).

start_release_cluster() {
  cargo build --release -p domicile-cli
  domicile="${CARGO_TARGET_DIR:-target}/release/domicile"
  dir="$(mktemp -d)"
  cluster_pid=""
  trap stop_release_cluster EXIT
  "$domicile" cluster up --dir "$dir" --gateway-listen 127.0.0.1:0 ${CLUSTER_ARGS:-} >"$dir/cluster-up.log" 2>&1 &
  cluster_pid=$!
  for _ in $(seq 1 120); do
    [[ -f "$dir/cluster.json" && -f "$dir/supervisor.json" ]] && return 0
    if ! kill -0 "$cluster_pid" 2>/dev/null; then
      cat "$dir/cluster-up.log" >&2
      echo "error: the local cluster did not start" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "error: no cluster.json after 60 s" >&2
  exit 1
}

stop_release_cluster() {
  if [[ -n "${cluster_pid:-}" ]] && kill -0 "$cluster_pid" 2>/dev/null; then
    kill -INT "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  # BENCH_KEEP_LOGS=<dir>: the processes' logs are copied there first (to see why a run failed).
  if [[ -n "${BENCH_KEEP_LOGS:-}" && -d "${dir:-}/logs" ]]; then
    mkdir -p "$BENCH_KEEP_LOGS" && cp -r "$dir/logs/." "$BENCH_KEEP_LOGS/"
  fi
  rm -rf "${dir:-/nonexistent-bench-dir}"
}
