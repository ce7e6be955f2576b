#!/usr/bin/env bash
# Builds everything into build/ (or $NOISE_BUILD):
#   build/sbin/nginx                               nginx (stream, stream_ssl, http_ssl)
#   build/modules/ngx_stream_noise_module.so       our dynamic module
#   build/bin/noisesocket                          the CLI
#   build/nginx-build-dir, build/nginx-source-dir  the configured objs/ dir and its source
#                                                  (NGINX_BUILD_DIR/NGINX_SOURCE_DIR for cargo)
#
# Which nginx:
#   (default)         the vendored 1.28.3, from the nginx-src crate that cargo fetches;
#   NGINX_SRC=DIR     an nginx source tree (an unpacked release tarball, 1.22.1 or newer,
#                     with the stream sources). DIR is copied, never written to. A tree
#                     of headers only (Debian's nginx-dev: /usr/share/nginx/src) builds
#                     the module alone, for the nginx installed from it.
#   NGINX_CONFIGURE   replaces our default ./configure flags (e.g. Debian's conf_flags plus
#                     its stream flags); --with-stream is required, --with-compat and the
#                     module are always added.
# Either way nginx is configured out of tree (--builddir under build/) and the module is
# built the canonical way: --add-dynamic-module, whose make rule builds the Rust staticlib
# (nginx-module/config.make). Reuses cargo's target dir (CARGO_TARGET_DIR or ./target).
# On failure the artifacts above are removed, so nothing half-built is trusted later.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

build=${NOISE_BUILD:-$repo/build}
mkdir -p "$build"
build=$(cd "$build" && pwd)
fail() {
    echo "build: $*" >&2
    exit 1
}
discard() {
    rm -f "$build/sbin/nginx" "$build/modules/"*.so "$build/bin/noisesocket" \
        "$build/nginx-build-dir" "$build/nginx-source-dir"
}
trap 'rc=$?; [ $rc -eq 0 ] || discard; exit $rc' EXIT

# 1. Which nginx source, checked before anything is built.
if [ -n "${NGINX_SRC:-}" ]; then
    [ -d "$NGINX_SRC" ] || fail "NGINX_SRC=$NGINX_SRC: no such directory"
    origin=$(cd "$NGINX_SRC" && pwd)
    [ -f "$origin/src/core/nginx.h" ] || fail "NGINX_SRC=$origin is not an nginx source tree (no src/core/nginx.h)"
    [ -f "$origin/configure" ] || [ -f "$origin/auto/configure" ] ||
        fail "NGINX_SRC=$origin is not an nginx source tree (no configure script)"
else
    origin=""
fi
version_of() { sed -n 's/^#define NGINX_VERSION *"\([0-9.]*\)".*/\1/p' "$1/src/core/nginx.h"; }
number_of() { sed -n 's/^#define nginx_version *\([0-9]*\).*/\1/p' "$1/src/core/nginx.h"; }
if [ -n "$origin" ]; then
    nginx_version=$(version_of "$origin")
    number=$(number_of "$origin")
    [ -n "$number" ] || fail "NGINX_SRC=$origin: cannot read the nginx version from src/core/nginx.h"
    [ "$number" -ge 1022001 ] || fail "NGINX_SRC=$origin is nginx $nginx_version; the module needs nginx 1.22.1 or newer"
    [ -f "$origin/src/stream/ngx_stream.h" ] || fail "NGINX_SRC=$origin has no stream module sources (src/stream)"
fi

scripts/deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

# 2. The source tree we configure: the vendored one, or a copy of NGINX_SRC.
if [ -z "$origin" ]; then
    nginx_version=1.28.3
    src=$build/nginx-src/nginx-$nginx_version
    if [ ! -f "$src/auto/configure" ]; then
        cargo fetch --quiet
        crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/nginx-src-*+$nginx_version.crate 2>/dev/null | head -n1)
        [ -n "$crate" ] || fail "nginx-src crate for $nginx_version not found"
        rm -rf "$build/nginx-src/unpack" "$src" && mkdir -p "$build/nginx-src/unpack"
        tar -xzf "$crate" -C "$build/nginx-src/unpack"
        mv "$build/nginx-src/unpack"/nginx-src-*/nginx "$src"
        rm -rf "$build/nginx-src/unpack"
    fi
else
    tag=$(echo "$origin" | sha256sum | cut -c1-8)
    src=$build/nginx-src/nginx-$nginx_version-$tag
    rm -rf "$src" && mkdir -p "$build/nginx-src"
    cp -a "$origin" "$src"
fi
configure=auto/configure
[ -f "$src/$configure" ] || configure=configure

# 3. Configure out of tree, only when the options or the module's config changed.
objs=$build/nginx-objs/$(basename "$src")
if [ -n "${NGINX_CONFIGURE:-}" ]; then
    flags=$NGINX_CONFIGURE
else
    flags="--prefix=$build --with-threads --with-stream --with-stream_ssl_module --with-stream_ssl_preread_module --with-stream_realip_module --with-http_ssl_module --with-http_v2_module --with-debug"
fi
case " $flags " in
*" --with-stream "* | *" --with-stream=dynamic "*) ;;
*) fail "the nginx ./configure flags have no --with-stream: ngx_stream_noise_module is a stream module" ;;
esac
case " $flags " in
*" --without-http "*) fail "the nginx ./configure flags have --without-http: the module needs nginx's http (its http module and the ngx crate it is built on)" ;;
esac
# --builddir relative to the source tree (where configure and make run): nginx's auto/make
# turns sources into objects with unanchored seds ("s#\([^ ]*\.\)S#$NGX_OBJS/\1o#"), so an
# absolute build path with ".S" in it (a clone in /tmp/tmp.Sx..., a ~/My.Src) would become
# ".o" inside every object path of the Makefile.
objs_from_src=$(realpath -m --relative-to="$src" "$objs")
opts="--with-compat $flags --builddir=$objs_from_src --add-dynamic-module=$repo/nginx-module"
stamp="$src $opts $(cat nginx-module/config nginx-module/config.make | sha256sum | cut -c1-16) $CARGO_TARGET_DIR"
if [ ! -f "$objs/Makefile" ] || [ "$(cat "$objs/.noise-configured" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$objs"
    # shellcheck disable=SC2086 # flags are words on purpose (as on a configure command line)
    (cd "$src" && ./$configure $opts >"$build/configure.log" 2>&1) ||
        { tail -30 "$build/configure.log"; fail "configure of nginx $nginx_version failed (build/configure.log)"; }
    echo "$stamp" >"$objs/.noise-configured"
fi

# 4. nginx and the modules (the module's make rule runs cargo for the staticlib). A tree
# with headers only (Debian's nginx-dev, /usr/share/nginx/src) builds just our module, for
# the nginx that is already installed.
jobs=$(nproc 2>/dev/null || echo 2)
if [ -f "$src/src/core/nginx.c" ]; then
    targets="binary modules"
else
    targets="$objs_from_src/ngx_stream_noise_module.so" # as the Makefile names it
fi
# shellcheck disable=SC2086 # targets are words
(cd "$src" && make -j"$jobs" -f "$objs/Makefile" $targets >"$build/make.log" 2>&1) || {
    { grep -E "error|Error" -A5 "$build/make.log" || tail -20 "$build/make.log"; } | head -60
    fail "make of nginx $nginx_version failed (build/make.log)"
}
mkdir -p "$build/sbin" "$build/modules" "$build/bin" "$build/conf" "$build/logs"
[ ! -f "$objs/nginx" ] || install -m 755 "$objs/nginx" "$build/sbin/nginx"
for so in "$objs"/*.so; do
    install -m 755 "$so" "$build/modules/"
done
cp -n "$src/conf/mime.types" "$build/conf/" 2>/dev/null || true

# 5. the CLI.
cargo build --release --quiet --bin noisesocket
install -m 755 "$CARGO_TARGET_DIR/release/noisesocket" "$build/bin/noisesocket"
echo "$objs" >"$build/nginx-build-dir"
echo "$src" >"$build/nginx-source-dir"
echo "build: nginx $nginx_version: $(ls "$build"/sbin/nginx "$build"/modules/ngx_stream_noise_module.so "$build"/bin/noisesocket 2>/dev/null | tr "\n" " ")"
