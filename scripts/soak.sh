#!/usr/bin/env bash
# Soak test, bounded (about 3 minutes; SOAK_SECONDS of load, default 120): starts its own
# nginx (build/sbin/nginx + the module, copied first, so a rebuild meanwhile changes
# nothing; 2 workers; its own temp dir and 127.0.0.1 ports) with a noise_listen server
# proxying to a plain echo back end, and keeps 200 concurrent NoiseSocket clients
# (`noisesocket connect`, trusting both server keys, pinning neither) streaming a few MB
# each of deterministic pseudo-random data, checked byte for byte as it echoes back, while
# nginx is reloaded every 4 s alternating between two server private keys; stalled
# clients (silent, half a handshake, half a frame) and garbage clients (random bytes) run
# alongside. Reports connections attempted/succeeded, lost and corrupted bytes (must be
# 0), reloads, stalled/garbage clients closed by nginx, what the back end received, and
# the workers' total RSS and fds before and after (after: once the load is gone and the
# old workers have exited), then the error log's levels and noise: lines.
#
#   scripts/soak.sh
#   SOAK_SECONDS=60 SOAK_CLIENTS=100 SOAK_MB=2 SOAK_RELOAD_EVERY=3 scripts/soak.sh
#
# Exit 1 on lost or corrupted bytes, a failed genuine connection, a stalled or garbage
# connection nginx left open, back-end bytes no genuine client wrote, a failed reload, a
# worker crash or an alert/crit/emerg line. SOAK_KEEP=1 keeps the temp dir (nginx.conf,
# error.log). Needs a finished scripts/build.sh and python3 (standard library only).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
for f in build/sbin/nginx build/modules/ngx_stream_noise_module.so build/bin/noisesocket; do
    [ -e "$f" ] || { echo "soak: $f missing: run scripts/build.sh" >&2; exit 2; }
done
dir=$(mktemp -d /tmp/nginx-noise-soak-XXXXXX)
if [ "${SOAK_KEEP:-}" = 1 ]; then echo "soak: temp dir $dir (kept)"; else trap 'rm -rf "$dir"' EXIT; fi
mkdir -p "$dir/bin"
cp build/sbin/nginx build/modules/ngx_stream_noise_module.so build/bin/noisesocket "$dir/bin/"
# The whole run is bounded: load, drain, old workers' exit, report.
timeout -k 10 $((${SOAK_SECONDS:-120} + 150)) python3 scripts/soak/soak.py run \
    --nginx "$dir/bin/nginx" --module "$dir/bin/ngx_stream_noise_module.so" --cli "$dir/bin/noisesocket" \
    --dir "$dir" --seconds "${SOAK_SECONDS:-120}" --clients "${SOAK_CLIENTS:-200}" --mb "${SOAK_MB:-3}" \
    --reload-every "${SOAK_RELOAD_EVERY:-4}" --workers "${SOAK_WORKERS:-2}"
