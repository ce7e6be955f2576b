#!/usr/bin/env bash
# The benchmark: NoiseSocket against TLS 1.3 (with and without session resumption) and plain
# TCP on the same two-hop nginx chain, in one run, alternating: the two-process layout, the
# one-core layout (A and B in one nginx worker), a 2-worker new-connection run, idle memory,
# the X25519 floor, perf/strace profiles and the core's cargo benches. Writes
# bench-results/{results.md,results.json,chart.png,profile.md}. About 15 minutes.
#
#   scripts/bench/run.sh [--rounds N] [--duration S] [--idle N] [--workers N] [--only a,b]
#                        [--modes two-process,one-core,two-workers,idle,floor,profile,cargo]
#                        [--one-core] [--profile-variants a,b] [--no-cargo-bench]
#
# Installs what it needs (wrk, gnuplot, perf, strace), builds with scripts/build.sh (unless
# NOISE_BENCH_NO_BUILD=1; NOISE_BENCH_NGINX, NOISE_BENCH_MODULE and NOISE_BENCH_CLI point
# bench.py at other binaries), then runs scripts/bench/bench.py (`--help` explains every
# mode). Run it on an otherwise idle machine; the ratios are the result, the absolute figures
# depend on the machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
scripts/deps.sh wrk gnuplot-nox curl openssl strace linux-perf
if [ "${NOISE_BENCH_NO_BUILD:-}" != 1 ]; then
    scripts/build.sh
fi
exec python3 scripts/bench/bench.py "$@"
