#!/usr/bin/env bash
# Instructions per proxied request of the gateway, counted by valgrind's callgrind: a number that,
# unlike requests/s on a shared machine, does not move between runs, so it is what before/after
# comparisons of a change to the request path use (docs/performance.md).
#
#   ops/bench/callgrind.sh [gateway binary] [seconds]
#   ops/bench/callgrind.sh target/release/examples/hyper_util_proxy   # the same route through
#       # hyper-util's pooled client (the gateway's `hyper_util_proxy` example, same settings),
#       # for docs/decisions/0001-hand-written-http1-exchange.md
#   TELEMETRY=on ops/bench/callgrind.sh    # also export spans to a local OTLP sink (100 % sampled,
#                                           # or as OTEL_TRACES_SAMPLER/_ARG say)
#   LOG_LEVEL=warn ops/bench/callgrind.sh  # without the access log lines (default info)
#
# Runs a release catalog and the gateway (under callgrind, counting switched on only after a
# warm-up) on loopback ports, drives `GET /catalog/prod-123` through the gateway with wrk
# (1 thread, 4 connections), and prints requests, instructions and their ratio. The profile is
# kept for `callgrind_annotate --inclusive=yes <file>`. Needs valgrind and wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
GATEWAY=${1:-$BIN_DIR/gateway}
SECONDS_MEASURED=${2:-10}
for tool in valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh needs $tool (apt-get install valgrind wrk)"; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
CATALOG_PORT=$(free_port)
GATEWAY_PORT=$(free_port)
OUT=$(mktemp -d)
PIDS=()
stop() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop EXIT

TELEMETRY_ENV=()
if [ "${TELEMETRY:-off}" = on ]; then
  SINK_PORT=$(free_port)
  "$BIN_DIR/examples/otlp_sink" --port "$SINK_PORT" >/dev/null 2>&1 &
  PIDS+=($!)
  TELEMETRY_ENV=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"
    OTEL_TRACES_SAMPLER="${OTEL_TRACES_SAMPLER:-always_on}" OTEL_TRACES_SAMPLER_ARG="${OTEL_TRACES_SAMPLER_ARG:-1}")
fi
COMMON=(SIMULATION=off ADMIN_TOKEN=callgrind-admin-token SHUTDOWN_DRAIN_MS=0 BIND_ADDR=127.0.0.1 LOG_LEVEL="${LOG_LEVEL:-info}")
env -i PATH="$PATH" "${COMMON[@]}" PORT="$CATALOG_PORT" "$BIN_DIR/catalog" >"$OUT/catalog.log" 2>&1 &
PIDS+=($!)
env -i PATH="$PATH" "${COMMON[@]}" PORT="$GATEWAY_PORT" CATALOG_SERVICE_URL="http://127.0.0.1:$CATALOG_PORT" \
  CART_SERVICE_URL=http://127.0.0.1:9 ORDERS_SERVICE_URL=http://127.0.0.1:9 "${TELEMETRY_ENV[@]}" \
  taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" "$GATEWAY" \
  >"$OUT/gateway.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
for port in "$CATALOG_PORT" "$GATEWAY_PORT"; do
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
done
URL="http://127.0.0.1:$GATEWAY_PORT/catalog/prod-123"
wrk -t1 -c4 -d3s "$URL" >/dev/null # warm-up: pools, lazy statics, allocator
callgrind_control -i on "$GATEWAY_PID" >/dev/null
REPORT=$(wrk -t1 -c4 -d"${SECONDS_MEASURED}s" "$URL")
callgrind_control -i off "$GATEWAY_PID" >/dev/null
kill -INT "$GATEWAY_PID"
wait "$GATEWAY_PID" 2>/dev/null || true

REQUESTS=$(awk '/requests in/ {print $1}' <<<"$REPORT")
NON_2XX=$(awk '/Non-2xx/ {print $NF}' <<<"$REPORT")
INSTRUCTIONS=$(grep -o 'Collected : [0-9]*' "$OUT/gateway.log" | awk '{print $3}')
if [ -n "${NON_2XX:-}" ] || [ -z "$INSTRUCTIONS" ] || [ "${REQUESTS:-0}" -eq 0 ]; then
  echo "the run failed (non-2xx: ${NON_2XX:-0}); logs in $OUT"
  exit 1
fi
echo "requests=$REQUESTS instructions=$INSTRUCTIONS per_request=$((INSTRUCTIONS / REQUESTS))"
echo "profile: $OUT/callgrind.out"
