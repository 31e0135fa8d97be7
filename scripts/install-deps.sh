#!/usr/bin/env bash
# Install the Debian packages listed in lab/debian-packages.txt that are missing,
# and check the Go toolchain the lab builds with. Safe to run again: it does nothing
# when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$pkg")
  fi
done < lab/debian-packages.txt

if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "[deps] installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  echo "[deps] installed ${#missing[@]} package(s)"
fi

if ! command -v go >/dev/null; then
  echo "[deps] the Go toolchain (>= 1.26) is needed to build the lab; install it first" >&2
  exit 1
fi
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if ((go_minor < 26)); then
  echo "[deps] Go >= 1.26 is needed (Kubernetes 1.36 requires it); found $(go env GOVERSION)" >&2
  exit 1
fi
