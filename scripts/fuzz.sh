#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a given time each and prints their exec counts.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 300 s; parser responder initiator key_journal mux)
# Needs cargo-fuzz (installed here if missing). The machine has only a stable toolchain, so
# RUSTC_BOOTSTRAP=1 lets it accept the -Z flags cargo-fuzz passes (sanitizer, coverage).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(parser responder initiator key_journal mux)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    log="fuzz/logs/$t.log"
    echo "fuzz: $t for ${secs}s (log $log)"
    cargo fuzz run --release "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || { tail -40 "$log"; echo "fuzz: $t FAILED"; exit 1; }
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz: $t ok, $execs execs, $(ls "fuzz/corpus/$t" | wc -l) corpus entries"
done
