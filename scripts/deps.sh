#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need (openssl s_client and curl are
# test clients), only those missing.
# Idempotent; uses sudo when not root. Refreshes the package index first when installing,
# because a stale index can pin -dev packages to versions older than their installed
# runtime libraries (libpcre2-dev vs a security-updated libpcre2-8-0).
#   scripts/deps.sh [EXTRA_PACKAGE...]     (the benchmark adds wrk, gnuplot-nox, ...)
set -euo pipefail
packages=(libclang-dev libpcre2-dev libssl-dev zlib1g-dev pkg-config make perl python3-venv openssl curl "$@")
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
$sudo apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
