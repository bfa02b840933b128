#!/usr/bin/env bash
# Make sure the observability checks' tools are installed: Prometheus and promtool (Debian's
# `prometheus` package: the stack test runs the real server, `make check-observability` runs
# promtool) and a Compose implementation to validate docker-compose.yml without a Docker
# engine (Debian's `docker-compose`, unless `docker compose` is already there).
# Installs with apt-get when something is missing (as root, or through sudo). With
# `--print-missing` it only prints the missing Debian packages, one a line (`.ci/run` installs
# them with the rest in one apt-get run).
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
if [ "${1:-}" = --print-missing ]; then
  [ ${#missing[@]} -eq 0 ] || printf '%s\n' "${missing[@]}"
  exit 0
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${missing[*]} — install them with your package manager (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    echo "missing: ${missing[*]} — run as root or install: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing ${missing[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# --no-install-recommends: the node exporter and friends are not needed. Only the binaries are
# used; in containers and CI no init system starts the package's daemon, while on a desktop with
# systemd it starts on :9090 (`systemctl disable --now prometheus` if unwanted).
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
