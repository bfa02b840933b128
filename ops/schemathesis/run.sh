#!/usr/bin/env bash
# `make schemathesis`: check that every served OpenAPI document tells the truth.
#
# Builds the workspace as `make test` does (so after `make test` nothing is rebuilt), starts the
# catalog, cart, orders and gateway on free loopback ports with the simulation off (injected
# faults would be "server errors"), and runs `st run <service>/openapi.json --checks all` against
# each of them, and against a second gateway with edge auth and rate limiting on (its document
# then promises 401/404/429 and a bearer scheme). Schemathesis is installed from PyPI into a
# throwaway venv. Exit status: non-zero on any finding.
#
# Knobs: ST_MAX_TIME (seconds per run, default 45), ST_VENV (venv path), ST_VERSION.
set -euo pipefail
cd "$(dirname "$0")/../.."

MAX_TIME=${ST_MAX_TIME:-45}
VENV=${ST_VENV:-${TMPDIR:-/tmp}/shopstack-schemathesis-venv}
VERSION=${ST_VERSION:-4.32.5}
CONFIG=$PWD/ops/schemathesis/schemathesis.toml
# Works around schemathesis copying percent-encoded path values into query parameters (see the file).
export SCHEMATHESIS_HOOKS=$PWD/ops/schemathesis/hooks.py
ADMIN=schemathesis-local-admin
JWT=schemathesis-local-hs256-secret-0123456789

if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "== installing schemathesis $VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi

echo "== building the services"
# The same command as `make test`'s build: the same features and profile, so it reuses that build
# (a per-package `cargo build` unifies features without the dev-dependencies and rebuilds shared
# crates such as reqwest, and then the services, into the same paths).
cargo test -q --workspace --no-run
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
CATALOG=$(free_port); CART=$(free_port); ORDERS=$(free_port); GATEWAY=$(free_port); GATEWAY_AUTH=$(free_port)
LOGS=$(mktemp -d)
PIDS=()
stop() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop EXIT

start() { # name port env...
  local name=$1 port=$2; shift 2
  env -i PATH="$PATH" SIMULATION=off LOG_LEVEL=warn BIND_ADDR=127.0.0.1 PORT="$port" ADMIN_TOKEN="$ADMIN" "$@" \
    "$BIN/${name%%-*}" >"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
}
start catalog "$CATALOG"
start cart "$CART" CATALOG_SERVICE_URL="http://127.0.0.1:$CATALOG"
start orders "$ORDERS" CATALOG_SERVICE_URL="http://127.0.0.1:$CATALOG" CART_SERVICE_URL="http://127.0.0.1:$CART" \
  DATABASE_URL="sqlite://$LOGS/orders.db"
upstreams=(CATALOG_SERVICE_URL="http://127.0.0.1:$CATALOG" CART_SERVICE_URL="http://127.0.0.1:$CART"
  ORDERS_SERVICE_URL="http://127.0.0.1:$ORDERS")
start gateway "$GATEWAY" "${upstreams[@]}"
start gateway-auth "$GATEWAY_AUTH" "${upstreams[@]}" JWT_SECRET="$JWT" RATE_LIMIT_RPS=50

for port in "$CATALOG" "$CART" "$ORDERS" "$GATEWAY" "$GATEWAY_AUTH"; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "port $port never became ready; logs in $LOGS"; exit 1; }
done
USER_TOKEN=$(env -i JWT_SECRET="$JWT" "$BIN/gateway" mint-token --sub schemathesis-user --ttl 1h)

failed=()
check() { # name port bearer [filters...]
  local name=$1 port=$2 bearer=$3
  shift 3
  echo "== schemathesis: $name"
  # Run from the scratch directory: schemathesis keeps a crash cache where it runs.
  if ! (cd "$LOGS" && "$VENV/bin/st" --config-file "$CONFIG" run "http://127.0.0.1:$port/openapi.json" \
      --checks all --max-time "$MAX_TIME" --workers 1 \
      --header "Authorization: Bearer $bearer" "$@" >"$LOGS/st-$name.txt" 2>&1); then
    failed+=("$name")
    sed -n '/FAILURES\|ERRORS/,$p' "$LOGS/st-$name.txt"
  fi
  grep -E 'generated' "$LOGS/st-$name.txt" | tail -1
}
# The simulation knobs get a pass of their own, last: schema-valid values there switch injected
# failures on, which every later request would see as server errors.
EVERYTHING_ELSE=(--exclude-path-regex '/simulation$')
# A cart is never gone: `DELETE /cart/{user_id}` and `DELETE /v1/cart/{user_id}` empty it (the
# simple cart API answers "Cart cleared successfully") and `GET` of any user answers that user's
# cart, empty when there is none (an unknown user gets an empty cart, not 404). So a GET after the
# DELETE answering 200 with no items is the contract, and `use_after_free` ("a deleted resource
# must answer 404") does not apply — in the cart, and through the gateway, whose only DELETE
# routes are the cart's. It is excluded on the command line because `--checks all` there outranks
# an operation's `use_after_free.enabled = false` in schemathesis.toml (checked with
# `checks_config_for` in 4.32.5); the catalog keeps it for `DELETE /inventory/holds/{owner}`.
CART_DELETES=(--exclude-checks use_after_free)
check catalog "$CATALOG" "$ADMIN" "${EVERYTHING_ELSE[@]}"
check cart "$CART" "$ADMIN" "${EVERYTHING_ELSE[@]}" "${CART_DELETES[@]}"
check orders "$ORDERS" "$ADMIN" "${EVERYTHING_ELSE[@]}"
check gateway "$GATEWAY" "$ADMIN" "${EVERYTHING_ELSE[@]}" "${CART_DELETES[@]}"
check gateway-with-auth "$GATEWAY_AUTH" "$USER_TOKEN" "${EVERYTHING_ELSE[@]}" "${CART_DELETES[@]}"
check simulation-knobs "$GATEWAY" "$ADMIN" --include-path-regex '/simulation$'

if [ ${#failed[@]} -gt 0 ]; then
  echo "schemathesis found problems in: ${failed[*]} (full reports in $LOGS)"
  exit 1
fi
echo "schemathesis: no findings"
