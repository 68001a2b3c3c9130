#!/usr/bin/env bash
# Static checks of flake.nix, which cannot fetch nixpkgs here: it parses, and it maps every
# dependency of pyproject.toml (the flake reads its lists from pyproject.toml; `pypiToNix`
# only says where each name lives in nixpkgs). Installs Debian's nix-bin when it is missing
# and this runs as root with apt-get; otherwise says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nix-instantiate >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q nix-bin >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q nix-bin >/dev/null; }
  else
    echo "nix-check: nix-instantiate not found (Debian: apt-get install nix-bin)" >&2
    exit 1
  fi
fi

nix-instantiate --parse flake.nix >/dev/null
unmapped=$(nix-instantiate --eval --strict --json \
  -E '((import ./flake.nix).outputs { self = {}; nixpkgs = {}; }).lib.unmapped')
if [ "$unmapped" != "[]" ]; then
  echo "nix-check: pyproject.toml dependencies missing from flake.nix pypiToNix: $unmapped" >&2
  exit 1
fi
echo "nix-check: flake.nix parses and maps every pyproject.toml dependency"
