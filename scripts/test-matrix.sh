#!/usr/bin/env bash
# The nginx suites (prove -r -I t/lib t/, with the Python peer of scripts/python-env.sh)
# against three nginx builds, one PASS/FAIL line each; exits non-zero if any failed.
#
#   vendored   nginx 1.28.3 from scripts/build.sh, in build/
#   debian     Debian 12's packaged nginx 1.22.1 (apt: nginx, libnginx-mod-stream) with
#              build/deb/libnginx-mod-stream-noise_*.deb (scripts/debian-package.sh)
#              installed; this installs packages on the machine and leaves them installed
#   1.26       nginx 1.26.3's upstream tarball from Debian's archive (checked against the
#              SHA-256 in the .dsc next to it and the one pinned here), built with
#              NGINX_SRC=... NOISE_BUILD=build/matrix-1.26 scripts/build.sh
#
#   mainline   nginx 1.31.4 from t/data/nginx/ (its README: why it is in the repository),
#              SHA-256 checked, unpacked into build/matrix-src/ and built as src:DIR
#
#   src:DIR    any nginx source tree (a release tarball unpacked, or a release tree made
#              from nginx's repository at its release-X.Y.Z tag the way its misc/GNUmakefile
#              makes one: auto/configure as ./configure, docs/html and docs/man at the top),
#              built with NGINX_SRC=DIR NOISE_BUILD=build/matrix-X.Y.Z scripts/build.sh
#
#   scripts/test-matrix.sh [vendored|debian|1.26|mainline|src:DIR ...]  (default: the first three)
#
# Downloads are cached in build/matrix-cache/; logs go to build/matrix-logs/<build>.log.
# MATRIX_SUITE_TIMEOUT (seconds, default 900) bounds each prove run; MATRIX_SUITES (default
# t/, every suite) names what prove runs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cache=$repo/build/matrix-cache
logs=$repo/build/matrix-logs
mkdir -p "$cache" "$logs"
suite_timeout=${MATRIX_SUITE_TIMEOUT:-900}

ngx_mainline=1.31.4
ngx_mainline_sha256=3e301bd97afbddb6193b88f050fd1fb2bfe31c015578a8eb7d9c7e3b44aa3178
ngx126=1.26.3
ngx126_sha256=69ee2b237744036e61d24b836668aad3040dda461fe6f570f1787eab570c75aa
# Debian revisions whose .dsc lists nginx_1.26.3.orig.tar.gz (trixie), newest first.
ngx126_dsc_revisions="3+deb13u3 3+deb13u2 3+deb13u1 3"
ngx126_pools="http://deb.debian.org/debian/pool/main/n/nginx http://deb.debian.org/debian-security/pool/updates/main/n/nginx"

builds=("$@")
[ ${#builds[@]} -gt 0 ] || builds=(vendored debian 1.26)
for b in "${builds[@]}"; do
    case $b in
    vendored | debian | 1.26 | mainline) ;;
    src:*)
        [ -f "${b#src:}/src/core/nginx.h" ] ||
            { echo "test-matrix: $b: not an nginx source tree (no src/core/nginx.h)" >&2; exit 2; }
        ;;
    *) echo "test-matrix: unknown build '$b' (vendored, debian, 1.26, mainline, src:DIR)" >&2; exit 2 ;;
    esac
done
# The harness reads these; each build sets its own.
unset TEST_NGINX_BINARY TEST_NGINX_MODULE TEST_NGINX_CLI TEST_NGINX_LOAD_MODULES

say() { echo "test-matrix: $*"; }
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

# --- the suites -------------------------------------------------------------------------

# run_suite NAME [VAR=value ...]: prove with the harness variables; records the result.
# Each suite gets its own TMPDIR, so that an nginx a test leaves running (its -p is its
# temp dir) is found, reported and stopped, and cannot be confused with anyone else's.
declare -A result
run_suite() {
    local name=$1 log=$logs/$1.log
    shift
    say "$name: prove -r -I t/lib ${MATRIX_SUITES:-t/} (log: $log)"
    local start=$SECONDS rc=0 tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/noise-matrix-$name.XXXXXX")
    chmod 755 "$tmp"    # like /tmp for the tests' own dirs: workers run as nobody
    env "$@" NOISE_PYTHON="$repo/build/venv/bin/python" TMPDIR="$tmp" \
        timeout --kill-after=30 "$suite_timeout" prove -r -I t/lib ${MATRIX_SUITES:-t/} >>"$log" 2>&1 || rc=$?
    local summary note="" leaked pid
    summary=$(grep -E '^Files=' "$log" | tail -n1 | sed 's/,  *[0-9]* wallclock.*//')
    [ $rc -eq 124 ] && summary="timed out after ${suite_timeout}s; $summary"
    leaked=$(pgrep -f "^nginx: master process .* -p $tmp/" || true)
    if [ -n "$leaked" ]; then
        note="; warning: $(echo "$leaked" | wc -w) nginx master(s) left running by the suite, stopped"
        ps -o pid=,lstart=,args= -p "$(echo "$leaked" | paste -sd,)" | sed 's/^/    left running: /' | tee -a "$log"
        # shellcheck disable=SC2086 # pids
        kill -QUIT $leaked 2>/dev/null || true
        sleep 2
        for pid in $leaked; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"; done
    fi
    rm -rf "$tmp"
    if [ $rc -eq 0 ] && grep -q '^Result: PASS' "$log"; then
        result[$name]="PASS ($summary, $((SECONDS - start))s$note)"
    else
        result[$name]="FAIL ($summary, $((SECONDS - start))s$note)"
        grep -E '^(t/\S+ +\(Wstat|Failed tests?:|  Failed test)|^t/.*(Failed|Dubious)' "$log" | head -10 | sed 's/^/    /'
    fi
    say "$name: ${result[$name]}"
}

# fail_build NAME REASON: the build could not be made; no suite ran.
fail_build() {
    result[$1]="FAIL (not built: $2; log: $logs/$1.log)"
    say "$1: ${result[$1]}"
}

# --- (a) vendored 1.28.3 ----------------------------------------------------------------

matrix_vendored() {
    local log=$logs/vendored.log
    : >"$log"
    say "vendored: scripts/build.sh"
    if ! scripts/build.sh >>"$log" 2>&1; then
        fail_build vendored "scripts/build.sh failed"
        return
    fi
    run_suite vendored \
        TEST_NGINX_BINARY="$repo/build/sbin/nginx" \
        TEST_NGINX_MODULE="$repo/build/modules/ngx_stream_noise_module.so" \
        TEST_NGINX_CLI="$repo/build/bin/noisesocket"
}

# --- (b) Debian 12's nginx with the .deb --------------------------------------------------

apt_get() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q "$@"
}
# Runs apt-get with a policy-rc.d that keeps nginx from being started (unless one exists).
apt_no_start() {
    local guard="" rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # shellcheck disable=SC2064 # $sudo now
        trap "$sudo rm -f /usr/sbin/policy-rc.d" EXIT    # also when interrupted
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    apt_get "$@" || rc=$?
    if [ -n "$guard" ]; then
        $sudo rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    return $rc
}

matrix_debian() {
    local log=$logs/debian.log
    : >"$log"
    say "debian: scripts/debian-package.sh"
    if ! scripts/debian-package.sh >>"$log" 2>&1; then
        fail_build debian "scripts/debian-package.sh failed"
        return
    fi
    local deb
    deb=$(sed -n 's|^debian-package: \(/.*\.deb\)$|\1|p' "$log" | tail -n1)
    [ -n "$deb" ] || { fail_build debian "scripts/debian-package.sh named no .deb"; return; }
    say "debian: apt-get install nginx libnginx-mod-stream ${deb#"$repo"/}"
    if ! apt_no_start install --no-install-recommends nginx libnginx-mod-stream >>"$log" 2>&1 ||
        ! apt_no_start install --reinstall "$deb" >>"$log" 2>&1; then
        fail_build debian "apt-get install failed"
        return
    fi
    if ! /usr/sbin/nginx -t >>"$log" 2>&1; then
        fail_build debian "nginx -t of /etc/nginx/nginx.conf fails with the package installed"
        return
    fi
    run_suite debian \
        TEST_NGINX_BINARY=/usr/sbin/nginx \
        TEST_NGINX_MODULE=/usr/lib/nginx/modules/ngx_stream_noise_module.so \
        TEST_NGINX_LOAD_MODULES=/usr/lib/nginx/modules/ngx_stream_module.so \
        TEST_NGINX_CLI=/usr/bin/noisesocket
}

# --- (c) nginx 1.26.3 from Debian's archive --------------------------------------------------

# Prints the path of the verified tarball in the cache, downloading what is missing.
fetch_126() {
    local orig=nginx_$ngx126.orig.tar.gz dsc="" rev pool url
    # A cached .dsc first; otherwise the first revision the archive has.
    for rev in $ngx126_dsc_revisions; do
        [ -s "$cache/nginx_$ngx126-$rev.dsc" ] && { dsc=$cache/nginx_$ngx126-$rev.dsc; break; }
    done
    if [ -z "$dsc" ]; then
        for rev in $ngx126_dsc_revisions; do
            for pool in $ngx126_pools; do
                url=$pool/nginx_$ngx126-$rev.dsc
                if curl -fsS --retry 2 --max-time 60 -o "$cache/.dsc.part" "$url" 2>/dev/null; then
                    mv "$cache/.dsc.part" "$cache/nginx_$ngx126-$rev.dsc"
                    dsc=$cache/nginx_$ngx126-$rev.dsc
                    echo "fetched $url" >&2
                    echo "$pool" >"$cache/nginx_$ngx126.pool"
                    break 2
                fi
            done
        done
    fi
    [ -n "$dsc" ] || { echo "no nginx_$ngx126-{$ngx126_dsc_revisions}.dsc in $ngx126_pools" >&2; return 1; }
    # The SHA-256 the .dsc gives for the tarball (Checksums-Sha256: " <sha> <size> <name>").
    local want
    want=$(awk -v f="$orig" '/^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == f {print $1}' "$dsc")
    [ -n "$want" ] || { echo "$dsc lists no $orig" >&2; return 1; }
    [ "$want" = "$ngx126_sha256" ] ||
        { echo "$dsc gives $want for $orig, this script pins $ngx126_sha256" >&2; return 1; }
    if [ ! -s "$cache/$orig" ] || [ "$(sha256sum <"$cache/$orig" | cut -d' ' -f1)" != "$want" ]; then
        pool=$(cat "$cache/nginx_$ngx126.pool" 2>/dev/null || echo "${ngx126_pools%% *}")
        url=$pool/$orig
        curl -fsS --retry 2 --max-time 300 -o "$cache/$orig.part" "$url" ||
            { echo "download of $url failed" >&2; return 1; }
        mv "$cache/$orig.part" "$cache/$orig"
        echo "fetched $url" >&2
    fi
    local got
    got=$(sha256sum <"$cache/$orig" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "$orig: sha256 $got, $(basename "$dsc") says $want" >&2; return 1; }
    echo "$orig: sha256 $got matches $(basename "$dsc")" >&2
    echo "$cache/$orig"
}

matrix_126() {
    local log=$logs/1.26.log tarball src=$repo/build/matrix-src/nginx-$ngx126 out=$repo/build/matrix-1.26
    : >"$log"
    say "1.26: nginx $ngx126 from Debian's archive"
    if ! tarball=$(fetch_126 2>>"$log"); then
        fail_build 1.26 "download or checksum of nginx $ngx126 failed: $(tail -n1 "$log")"
        return
    fi
    tail -n1 "$log" | sed 's/^/    /'
    if [ "$(cat "$src/.tarball-sha256" 2>/dev/null)" != "$ngx126_sha256" ]; then
        rm -rf "$src" && mkdir -p "$(dirname "$src")"
        if ! tar -xzf "$tarball" -C "$(dirname "$src")"; then
            fail_build 1.26 "unpacking $tarball failed"
            return
        fi
        echo "$ngx126_sha256" >"$src/.tarball-sha256"
    fi
    say "1.26: NGINX_SRC=build/matrix-src/nginx-$ngx126 NOISE_BUILD=build/matrix-1.26 scripts/build.sh"
    # Own cargo target dir: the staticlib is built against this nginx's headers.
    if ! NGINX_SRC=$src NOISE_BUILD=$out CARGO_TARGET_DIR=$out/target scripts/build.sh >>"$log" 2>&1; then
        fail_build 1.26 "scripts/build.sh failed"
        return
    fi
    run_suite 1.26 \
        TEST_NGINX_BINARY="$out/sbin/nginx" \
        TEST_NGINX_MODULE="$out/modules/ngx_stream_noise_module.so" \
        TEST_NGINX_CLI="$out/bin/noisesocket"
}

# --- (d) any nginx source tree --------------------------------------------------------------

# The name of a src:DIR build: the nginx version its nginx.h declares.
src_name() {
    echo "src-$(sed -n 's/^#define NGINX_VERSION *"\([0-9.]*\)".*/\1/p' "${1#src:}/src/core/nginx.h")"
}

matrix_src() {
    local dir name out log
    dir=$(cd "${1#src:}" && pwd)
    name=$(src_name "$1")
    out=$repo/build/matrix-${name#src-}
    log=$logs/$name.log
    : >"$log"
    say "$name: NGINX_SRC=$dir NOISE_BUILD=${out#"$repo"/} scripts/build.sh"
    # Own cargo target dir: the staticlib is built against this nginx's headers.
    if ! NGINX_SRC=$dir NOISE_BUILD=$out CARGO_TARGET_DIR=$out/target scripts/build.sh >>"$log" 2>&1; then
        fail_build "$name" "scripts/build.sh failed"
        return
    fi
    run_suite "$name" \
        TEST_NGINX_BINARY="$out/sbin/nginx" \
        TEST_NGINX_MODULE="$out/modules/ngx_stream_noise_module.so" \
        TEST_NGINX_CLI="$out/bin/noisesocket"
}

# --- (e) mainline, from the repository's tarball -------------------------------------------

# Unpacks t/data/nginx/nginx-$ngx_mainline.tar.xz once; prints the tree's directory.
mainline_tree() {
    local tar=$repo/t/data/nginx/nginx-$ngx_mainline.tar.xz dir=$repo/build/matrix-src
    echo "$ngx_mainline_sha256  $tar" | sha256sum -c --quiet >&2 ||
        { echo "test-matrix: $tar does not match its pinned SHA-256" >&2; return 1; }
    if [ ! -f "$dir/nginx-$ngx_mainline/src/core/nginx.h" ]; then
        mkdir -p "$dir" && rm -rf "$dir/nginx-$ngx_mainline" && tar -xJf "$tar" -C "$dir"
    fi
    echo "$dir/nginx-$ngx_mainline"
}

# --- run ---------------------------------------------------------------------------------

start=$SECONDS
scripts/deps.sh
scripts/python-env.sh
for b in "${builds[@]}"; do
    case $b in
    vendored) matrix_vendored ;;
    debian) matrix_debian ;;
    1.26) matrix_126 ;;
    mainline)
        if tree=$(mainline_tree); then
            matrix_src "src:$tree"
        else
            result[mainline]="FAIL (not built: the tarball in t/data/nginx/ is not the pinned one)"
        fi
        ;;
    src:*) matrix_src "$b" ;;
    esac
done

echo "== test matrix ($(((SECONDS - start) / 60))m$(((SECONDS - start) % 60))s)"
failed=0
for b in "${builds[@]}"; do
    case $b in
    vendored) label="vendored nginx 1.28.3" ;;
    debian) label="Debian 12 nginx $(dpkg-query -W -f='${Version}' nginx 2>/dev/null || echo '?') + .deb" ;;
    1.26) label="nginx $ngx126 (Debian archive tarball)" ;;
    mainline) label="nginx $ngx_mainline (mainline, t/data/nginx)" ;;
    src:*) label="nginx $(src_name "$b" | cut -c5-) (${b#src:})" ;;
    esac
    key=$b
    case $b in
    src:*) key=$(src_name "$b") ;;
    mainline) [ -n "${result[mainline]:-}" ] || key=src-$ngx_mainline ;;
    esac
    printf '%-48s %s\n' "$label:" "${result[$key]}"
    case ${result[$key]} in PASS*) ;; *) failed=1 ;; esac
done
exit $failed
