#!/usr/bin/env bash
# Create the Secret `shopstack` the dev overlay reads, with random values, in the cluster of the
# current kubectl context (`make k8s-dev-secret`). An existing Secret is kept: PostgreSQL keeps
# the password it was initialised with. The values never touch the repository; read one back
# with `kubectl -n shopstack get secret shopstack -o jsonpath='{.data.admin-token}' | base64 -d`.
set -euo pipefail
cd "$(dirname "$0")"

namespace=shopstack
kubectl apply -f base/namespace.yaml >/dev/null
if kubectl -n "$namespace" get secret shopstack >/dev/null 2>&1; then
  echo "secret $namespace/shopstack exists; kept (delete it first to make new values)"
  exit 0
fi
random() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# No jwt-secret: edge auth stays off in dev, as under docker-compose (add the key to turn it on).
# Through a pipe, not the command line, which every user of the machine sees in `ps`.
kubectl -n "$namespace" create secret generic shopstack --from-env-file=<(
  printf 'admin-token=%s\nservice-auth-secret=%s\npostgres-password=%s\n' "$(random)" "$(random)" "$(random)"
)
echo "created secret $namespace/shopstack (admin-token, service-auth-secret, postgres-password)"
