#!/usr/bin/env bash
# The benchmark: NoiseSocket against TLS 1.3 and plain TCP on the same two-hop nginx chain,
# in one run, alternating. Writes bench-results/{results.md,results.json,chart.png}.
#
#   scripts/bench/run.sh [--rounds N] [--duration S] [--idle N] [--workers N] [--only a,b]
#
# Installs what it needs (wrk, gnuplot), builds with scripts/build.sh, then runs
# scripts/bench/bench.py. Run it on an otherwise idle machine; the ratios are the result,
# the absolute figures depend on the machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
scripts/deps.sh wrk gnuplot-nox curl openssl
scripts/build.sh
exec python3 scripts/bench/bench.py "$@"
