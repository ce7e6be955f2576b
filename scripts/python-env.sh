#!/usr/bin/env bash
# A venv with the independent Noise implementation the interop tests use (PyPI
# `noiseprotocol`), at ${NOISE_VENV:-build/venv}. Idempotent and quiet when nothing changes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NOISE_VENV:-$repo/build/venv}
if ! "$venv/bin/python" -c "import noise.connection" >/dev/null 2>&1; then
    echo "python-env: creating $venv with noiseprotocol"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check noiseprotocol==0.3.1
fi
