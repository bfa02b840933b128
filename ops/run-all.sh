#!/usr/bin/env bash
# Start every ShopStack service on its embedded default (no servers needed), prefix each log
# line with the service name, and stop them all on Ctrl-C. Used by `make run-all`.
set -euo pipefail

BIN_DIR=${BIN_DIR:-target/debug}
SERVICES=${SERVICES:-"catalog cart orders gateway"}
pids=()

stop_all() {
  trap - INT TERM EXIT
  echo "stopping: ${SERVICES}" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all INT TERM EXIT

for service in $SERVICES; do
  if [ ! -x "$BIN_DIR/$service" ]; then
    echo "missing $BIN_DIR/$service: run 'cargo build' first" >&2
    exit 1
  fi
  # $! must be the service itself (not a pipeline subshell) so stop_all can signal it.
  "$BIN_DIR/$service" > >(sed -u "s/^/[$service] /") 2>&1 &
  pids+=("$!")
done

echo "ShopStack is up: gateway http://127.0.0.1:8000 (docs at /docs). Ctrl-C stops everything." >&2
wait -n "${pids[@]}" || true
