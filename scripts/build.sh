#!/usr/bin/env bash
# Builds everything into build/:
#   build/sbin/nginx                               nginx 1.28.3 (stream, stream_ssl, http_ssl)
#   build/modules/ngx_stream_noise_module.so       our dynamic module
#   build/bin/noisesocket                          the CLI
# nginx's source comes from the nginx-src crate (fetched by cargo); the module is built the
# canonical way: auto/configure --add-dynamic-module, whose make rule builds the Rust
# staticlib. Reuses cargo's target dir (CARGO_TARGET_DIR or ./target).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/deps.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
build=$repo/build
nginx_version=1.28.3
src=$build/nginx-src/nginx-$nginx_version
mkdir -p "$build"

# 1. nginx source, unpacked from the crate that cargo fetched.
if [ ! -f "$src/auto/configure" ]; then
    cargo fetch --quiet
    crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/nginx-src-*+$nginx_version.crate 2>/dev/null | head -n1)
    [ -n "$crate" ] || { echo "build: nginx-src crate for $nginx_version not found" >&2; exit 1; }
    rm -rf "$build/nginx-src" && mkdir -p "$build/nginx-src/unpack"
    tar -xzf "$crate" -C "$build/nginx-src/unpack"
    mv "$build/nginx-src/unpack"/nginx-src-*/nginx "$src"
    rm -rf "$build/nginx-src/unpack"
fi

# 2. configure, only when the options or the module's config changed.
opts="--prefix=$build --with-compat --with-threads --with-stream --with-stream_ssl_module"
opts="$opts --with-http_ssl_module --with-debug --add-dynamic-module=$repo/nginx-module"
stamp="$opts $(cat nginx-module/config nginx-module/config.make | sha256sum | cut -c1-16) $CARGO_TARGET_DIR"
if [ ! -f "$src/objs/Makefile" ] || [ "$(cat "$src/objs/.noise-configured" 2>/dev/null)" != "$stamp" ]; then
    (cd "$src" && auto/configure $opts >"$build/configure.log" 2>&1) \
        || { tail -30 "$build/configure.log"; exit 1; }
    echo "$stamp" >"$src/objs/.noise-configured"
fi

# 3. nginx and the module (the module's make rule runs cargo for the staticlib).
jobs=$(nproc 2>/dev/null || echo 2)
(cd "$src" && make -j"$jobs" -f objs/Makefile binary modules >"$build/make.log" 2>&1) \
    || { grep -E "error|Error" -A5 "$build/make.log" | head -60; exit 1; }
mkdir -p "$build/sbin" "$build/modules" "$build/bin" "$build/conf" "$build/logs"
echo "$src/objs" >"$build/nginx-build-dir"
install -m 755 "$src/objs/nginx" "$build/sbin/nginx"
install -m 755 "$src/objs/ngx_stream_noise_module.so" "$build/modules/ngx_stream_noise_module.so"
cp -n "$src/conf/mime.types" "$build/conf/" 2>/dev/null || true

# 4. the CLI.
cargo build --release --quiet --bin noisesocket
install -m 755 "$CARGO_TARGET_DIR/release/noisesocket" "$build/bin/noisesocket"
echo "build: $build/sbin/nginx, $build/modules/ngx_stream_noise_module.so, $build/bin/noisesocket"
