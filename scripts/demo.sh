#!/usr/bin/env bash
# Builds everything, then runs nginx-conf/demo.conf and shows NoiseSocket in both directions:
#   1. noisesocket CLI --(Noise IK/XX)--> nginx noise_listen --> plain echo backend
#   2. plain client --> nginx (noise_upstream on) --(Noise)--> nginx noise_listen --> backend
#   3. the module's counters from the noise_status location
# Leaves nothing running. Files go to build/demo/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/build.sh
demo=$repo/build/demo
cli=$repo/build/bin/noisesocket
rm -rf "$demo" && mkdir -p "$demo/conf" "$demo/logs" "$demo/modules"
cp nginx-conf/demo.conf "$demo/conf/nginx.conf"
cp build/modules/ngx_stream_noise_module.so "$demo/modules/"
umask 077
for k in server client gateway; do
    "$cli" keygen >"$demo/conf/$k.key"
    "$cli" pubkey <"$demo/conf/$k.key" >"$demo/conf/$k.pub"
done
cat "$demo/conf/client.pub" "$demo/conf/gateway.pub" >"$demo/conf/trusted.keys"

python3 - <<'PY' &
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 17000)); s.listen(64)
def serve(c):
    while (d := c.recv(65536)):
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
backend=$!
nginx="$repo/build/sbin/nginx -p $demo/ -c $demo/conf/nginx.conf"
cleanup() { $nginx -s quit 2>/dev/null || true; kill $backend 2>/dev/null || true; }
trap cleanup EXIT
$nginx -t
$nginx
sleep 0.5

echo
echo "== 1. NoiseSocket client -> nginx (noise_listen :17443) -> plain echo backend"
echo "hello through NoiseSocket" | "$cli" connect 127.0.0.1:17443 -N -v \
    --protocol Noise_IK_25519_ChaChaPoly_BLAKE2s --key "$demo/conf/client.key" \
    --remote-key "$demo/conf/server.pub"
echo
echo "== 2. plain client -> nginx (:17080, noise_upstream on) -> NoiseSocket -> nginx (:17443) -> backend"
python3 - <<'PY'
import socket
s = socket.create_connection(("127.0.0.1", 17080))
s.sendall(b"hello from a plain TCP client\n"); s.shutdown(socket.SHUT_WR)
print(s.makefile("rb").read().decode(), end="")
PY
sleep 0.3
echo
echo "== access log (note \$noise_protocol, keys, \$noise_upstream_protocol)"
cat "$demo/logs/access.log"
echo
echo "== 3. counters (noise_status on :17090/metrics), the non-zero ones"
curl -s http://127.0.0.1:17090/metrics | grep -v -e '^#' -e ' 0$' || true
echo
echo "demo ok"
