#!/usr/bin/env bash
# Builds build/deb/libnginx-mod-stream-noise_<version>_<arch>.deb for Debian 12's nginx
# (apt's nginx 1.22.1-9+deb12u*), the way Debian builds its own libnginx-mod-* packages:
#
#   * scripts/build.sh compiles the module against nginx-dev (NGINX_SRC=/usr/share/nginx/src,
#     copied, never written in place) with nginx-dev's conf_flags, the stream flags Debian's
#     libnginx-mod-stream is built with and dpkg-buildflags' cc/ld options (what debhelper's
#     nginx_mod build system passes);
#   * dpkg-buildpackage with packaging/debian (debhelper, dh-sequence-nginx): dh_nginx writes
#     modules-available/mod-stream-noise.conf, the modules-enabled symlink scripts
#     (70-mod-stream-noise.conf, after 50-mod-stream.conf) and Depends: nginx-abi-<...>,
#     dh_shlibdeps the libc6 bound.
#
#   scripts/debian-package.sh        (env: DEB_REVISION, default 1)
#
# Installs what it needs with apt-get when missing (nginx-dev pulls in nginx; a temporary
# policy-rc.d keeps the service from being started). Build products under build/deb/:
# build/ (NOISE_BUILD of scripts/build.sh), target/ (cargo), pkg/ (package tree), *.log.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=$repo/build/deb
die() { echo "debian-package: $*" >&2; exit 1; }

# 1. Debian 12 only: the package is tied to the ABI of its nginx.
# shellcheck source=/dev/null
os=$(. /etc/os-release 2>/dev/null; echo "${ID:-}|${VERSION_ID:-}|${PRETTY_NAME:-an unknown system}")
IFS='|' read -r os_id os_ver os_name <<<"$os"
if [ "$os_id" != debian ] || [ "$os_ver" != 12 ]; then
    die "needs Debian 12 (bookworm) and its nginx-dev; this is $os_name"
fi
if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    die "needs Debian 12 with dpkg and apt-get"
fi
mkdir -p "$out"

# 2. Packages: nginx-dev (headers, conf_flags, ABI, dh_nginx), the packaging tools, the
# stream module (dh_auto_test loads ours after it) and the build's own (scripts/deps.sh).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
apt_install() {
    local missing=() p sudo="" guard=""
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "debian-package: installing ${missing[*]}"
    # Installing nginx must not start it (a build machine is not a web server).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # shellcheck disable=SC2064 # $sudo now
        trap "$sudo rm -f /usr/sbin/policy-rc.d" EXIT    # also when interrupted
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    local rc=0
    {
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
            --no-install-recommends "${missing[@]}"
    } >"$out/apt.log" 2>&1 || rc=$?
    if [ -n "$guard" ]; then
        $sudo rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    return $rc
}
apt_install nginx-dev \
    || die "nginx-dev is not installed and apt-get could not install it (see $out/apt.log)"
apt_install dpkg-dev debhelper libnginx-mod-stream \
    || die "apt-get could not install dpkg-dev debhelper libnginx-mod-stream (see $out/apt.log)"
scripts/deps.sh
ngx_dev=/usr/share/nginx/src
if [ ! -f "$ngx_dev/conf_flags" ] || [ ! -f "$ngx_dev/debian/libnginx-mod.abisubstvars" ]; then
    die "nginx-dev is installed but $ngx_dev has no conf_flags or debian/libnginx-mod.abisubstvars"
fi
ngx_dev_version=$(dpkg-query -W -f='${Version}' nginx-dev)
abi=$(sed -n 's/^nginx:abi=//p' "$ngx_dev/debian/libnginx-mod.abisubstvars")
[ -n "$abi" ] || die "no nginx:abi in $ngx_dev/debian/libnginx-mod.abisubstvars"

# 3. Build with scripts/build.sh against nginx-dev's tree (build.sh copies it, never writes
# under /usr/share; a tree of headers only builds just the module): nginx-dev's conf_flags,
# the stream flags of Debian's own build (nginx -V), so that the module signature matches
# the packaged nginx, and the cc/ld options debhelper's nginx_mod build system passes
# (dpkg-buildflags; hardening=+all gives the `-z now` of Debian's nginx). NGINX_CONFIGURE is
# split into words, so the options, which contain spaces, go in gcc response files.
export DEB_BUILD_MAINT_OPTIONS=${DEB_BUILD_MAINT_OPTIONS:-hardening=+all}
case "$out" in *[[:space:]]*) die "the build directory $out must not contain spaces" ;; esac
echo "$(dpkg-buildflags --get CFLAGS) -fPIC $(dpkg-buildflags --get CPPFLAGS)" >"$out/cc-opt.rsp"
echo "$(dpkg-buildflags --get LDFLAGS) -fPIC" >"$out/ld-opt.rsp"
stream_flags=(--with-stream=dynamic --with-stream_ssl_module --with-stream_ssl_preread_module
    --with-stream_realip_module)
NGX_CONF_FLAGS=()
# shellcheck disable=SC1091
. "$ngx_dev/conf_flags"
[ ${#NGX_CONF_FLAGS[@]} -gt 0 ] || die "$ngx_dev/conf_flags defines no NGX_CONF_FLAGS"
if [ -x /usr/sbin/nginx ]; then
    packaged=$(/usr/sbin/nginx -V 2>&1 | sed -n 's/^configure arguments: //p')
    for f in "${NGX_CONF_FLAGS[@]}" "${stream_flags[@]}"; do
        case " $packaged " in *" $f "*) ;; *) echo "debian-package: warning: /usr/sbin/nginx was not built with $f" >&2 ;; esac
    done
fi
flags="--with-cc-opt=@$out/cc-opt.rsp --with-ld-opt=@$out/ld-opt.rsp ${NGX_CONF_FLAGS[*]} ${stream_flags[*]}"
# Own cargo target dir: ./target holds the staticlib built against another nginx's headers.
export CARGO_TARGET_DIR=$out/target
echo "debian-package: building against nginx-dev $ngx_dev_version ($abi) (log: $out/build.log)"
NGINX_SRC=$ngx_dev NGINX_CONFIGURE=$flags NOISE_BUILD=$out/build scripts/build.sh >"$out/build.log" 2>&1 \
    || { tail -30 "$out/build.log"; die "scripts/build.sh against $ngx_dev failed (see $out/build.log)"; }
so=$out/build/modules/ngx_stream_noise_module.so
cli=$out/build/bin/noisesocket
if [ ! -f "$so" ] || [ ! -x "$cli" ]; then die "scripts/build.sh did not produce $so and $cli"; fi

# 4. The package tree: packaging/debian + the built files + a changelog for this version.
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
deb_version="$version-${DEB_REVISION:-1}"
arch=$(dpkg --print-architecture)
pkg=$out/pkg
rm -rf "$pkg"
mkdir -p "$pkg/stage" "$pkg/nginx-conf"
cp -a packaging/debian "$pkg/debian"
install -m 644 "$so" "$pkg/stage/"
install -m 755 "$cli" "$pkg/stage/"
cp README.md "$pkg/"
cp nginx-conf/demo.conf "$pkg/nginx-conf/"
crates=$(cargo tree -e normal,no-proc-macro --features nginx --prefix none -f '{p}|{l}' 2>/dev/null \
    | awk -F'|' '{split($1, a, " "); sub(/ \(\*\)$/, "", $2); if (a[1] != "nginx-noise") print " " a[1] " " a[2] ": " $2}' \
    | sort -u)
[ -n "$crates" ] || die "cargo tree listed no crates for debian/copyright"
python3 - "$pkg/debian/copyright" "$crates" <<'EOF'
import sys
path, crates = sys.argv[1], sys.argv[2]
text = open(path).read().replace("@CRATES@", crates)
open(path, "w").write(text)
EOF
maint=$(sed -n 's/^Maintainer: //p' packaging/debian/control)
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
cat >"$pkg/debian/changelog" <<EOF
nginx-noise ($deb_version) bookworm; urgency=medium

  * Built against nginx-dev $ngx_dev_version ($abi).

 -- $maint  $(date -R -u -d "@$epoch")
EOF

# 5. dpkg-buildpackage: binary only, unsigned; the .deb lands in build/deb/.
rm -f "$out"/libnginx-mod-stream-noise_* "$out"/nginx-noise_*
echo "debian-package: dpkg-buildpackage (log: $out/dpkg-buildpackage.log)"
(cd "$pkg" && SOURCE_DATE_EPOCH=$epoch dpkg-buildpackage -b -us -uc) >"$out/dpkg-buildpackage.log" 2>&1 \
    || { tail -30 "$out/dpkg-buildpackage.log"; die "dpkg-buildpackage failed (see $out/dpkg-buildpackage.log)"; }
deb=$out/libnginx-mod-stream-noise_${deb_version}_${arch}.deb
[ -f "$deb" ] || die "dpkg-buildpackage did not produce $deb"

# 6. What apt will check: the exact nginx ABI, the stream module, the files.
depends=$(dpkg-deb -f "$deb" Depends)
case ", $depends," in *", $abi,"*) ;; *) die "Depends lacks $abi: $depends" ;; esac
case ", $depends," in *", libnginx-mod-stream,"*) ;; *) die "Depends lacks libnginx-mod-stream: $depends" ;; esac
files=$(dpkg-deb -c "$deb")
for f in ./usr/lib/nginx/modules/ngx_stream_noise_module.so ./usr/bin/noisesocket \
    ./usr/share/nginx/modules-available/mod-stream-noise.conf \
    ./usr/share/doc/libnginx-mod-stream-noise/copyright; do
    grep -q " $f\$" <<<"$files" || die "$deb has no $f"
done
grep -q '70-mod-stream-noise.conf' < <(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst) \
    || die "$deb: postinst does not enable 70-mod-stream-noise.conf"
echo "debian-package: $deb"
echo "debian-package: Depends: $depends"
