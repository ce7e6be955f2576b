#!/usr/bin/env bash
# The one test command: builds everything, checks formatting and lints (cargo fmt --check,
# clippy -D warnings with and without the nginx layer, scripts/check-imports.py: no import
# circles), then runs the core/CLI tests (cargo), the Python interop tests and the nginx
# suites (prove t/) against the real nginx + module, and finally the same suites against
# Debian 12's packaged nginx with our .deb installed (scripts/test-matrix.sh debian; it
# installs nginx from apt), and the suites with mainline-only tests against nginx mainline
# from t/data/nginx/ (scripts/test-matrix.sh mainline).
# NOISE_SKIP_DEBIAN=1 and NOISE_SKIP_MAINLINE=1 leave those parts out.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/build.sh
scripts/python-env.sh
export NOISE_PYTHON="$repo/build/venv/bin/python"
echo "== cargo fmt --check, cargo clippy -D warnings"
cargo fmt --check
cargo clippy --release --quiet --all-targets -- -D warnings
# The nginx layer against the nginx that scripts/build.sh configured.
NGINX_BUILD_DIR=$(cat "$repo/build/nginx-build-dir") NGINX_SOURCE_DIR=$(cat "$repo/build/nginx-source-dir") \
    cargo clippy --release --quiet --all-targets --features nginx -- -D warnings
echo "== import circles and the nginx layer order"
python3 scripts/check-imports.py
echo "== cargo test"
log=$repo/build/cargo-test.log
if ! cargo test --release >"$log" 2>&1; then
    grep -E "panicked|^---- |FAILED|error(\[|:)" "$log" | head -40
    tail -20 "$log"
    exit 1
fi
grep -E "^test result" "$log" | awk '{p+=$4; f+=$6} END {print "cargo test: " p " passed, " f " failed"}' 
echo "== prove t/"
prove -r -I t/lib t/
if [ "${NOISE_SKIP_DEBIAN:-}" != 1 ]; then
    echo "== the suites against Debian 12's nginx with the .deb"
    scripts/test-matrix.sh debian
fi
if [ "${NOISE_SKIP_MAINLINE:-}" != 1 ]; then
    # The suites whose tests need mainline nginx features (least_time, proxy_protocol v2:
    # they skip on 1.28.3), against nginx 1.31.4 from t/data/nginx/, so that CI builds the
    # module's mainline-only code and runs those tests.
    echo "== the suites with mainline-only tests, against nginx mainline"
    MATRIX_SUITES="t/42-proxy-protocol.t t/46-upstream-pins.t" scripts/test-matrix.sh mainline
fi
