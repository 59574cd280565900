#!/usr/bin/env bash
# Builds the patched QEMU that passes the virtio-blk inline crypto engine through
# (patches/qemu/*.patch against Debian 12's qemu 7.2 source package):
#   $ICEBLK_QEMU_DIR (default build/qemu-ice)/qemu-system-x86_64
# Run it with `-L /usr/share/qemu -L /usr/share/seabios` (the firmware of the
# qemu-system-x86 package; the dfsg source has no blobs) and `-nic none`.
#
# Cached: the binary is rebuilt only when the patches, this script or the Debian
# source version change (build/qemu-ice/stamp). The first build takes about 3
# minutes on 2 cores. The source comes from `apt-get source` through a deb-src
# file of our own (/etc/apt/sources.list.d/iceblk-deb-src.sources); the existing
# apt files are left unchanged. Build dependencies: scripts/install-deps.sh --guest-ice.
#   scripts/build-qemu.sh [--print-stamp]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${ICEBLK_QEMU_DIR:-$root/build/qemu-ice}
patches=$root/patches/qemu
jobs=${ICEBLK_JOBS:-2}
srcfile=/etc/apt/sources.list.d/iceblk-deb-src.sources

log() { echo "build-qemu: $*" >&2; }
die() { log "error: $*"; exit 1; }

sudo=""
[[ $(id -u) -ne 0 ]] && sudo=sudo

# The deb-src entries mirror the deb entries of debian.sources (same URIs/suites).
ensure_deb_src() {
  [[ -f $srcfile ]] && return 0
  log "adding $srcfile (deb-src for apt-get source)"
  local main=/etc/apt/sources.list.d/debian.sources
  if [[ -f $main ]]; then
    sed -n 's/^Types: *deb$/Types: deb-src/; p' "$main" | $sudo tee "$srcfile.tmp" >/dev/null
  else
    $sudo tee "$srcfile.tmp" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  $sudo mv -f "$srcfile.tmp" "$srcfile"
  $sudo apt-get update -qq
}

source_version() {
  apt-cache showsrc qemu 2>/dev/null | awk '$1 == "Version:" && v == "" { v = $2 } END { print v }'
}

for tool in apt-get apt-cache dpkg-source meson ninja pkg-config cc patch sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh --guest-ice)"
done
ls "$patches"/*.patch >/dev/null 2>&1 || die "no patches in $patches"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9  # one build at a time (test.sh and demo.sh may race)

ensure_deb_src
version=$(source_version)
if [[ -z $version ]]; then
  $sudo apt-get update -qq
  version=$(source_version)
fi
[[ -n $version ]] || die "apt-cache showsrc qemu finds no source package (is $srcfile right?)"

stamp=$( {
  echo "qemu $version"
  sha256sum "$0" "$patches"/*.patch | sed "s|  $root/|  |"
} | sha256sum | cut -d' ' -f1)
if [[ ${1:-} == --print-stamp ]]; then
  echo "$stamp"
  exit 0
fi
if [[ -x $out/qemu-system-x86_64 && "$(cat "$out/stamp" 2>/dev/null)" == "$stamp" ]]; then
  log "up to date: $out/qemu-system-x86_64 (qemu $version + $(ls "$patches"/*.patch | wc -l) patches)"
  exit 0
fi

t0=$SECONDS
work=$out/work
rm -rf "$work" "$out/qemu-system-x86_64" "$out/stamp"
mkdir -p "$work"
log "[1/4] fetching the qemu $version source package (apt-get source)"
# apt-get source downloads into the current directory; as root it warns that the
# _apt sandbox cannot write there: harmless.
(cd "$work" && apt-get source --download-only -qq "qemu=$version" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
dscs=("$work"/qemu_*.dsc)
dsc=${dscs[0]}
[[ -f $dsc ]] || die "apt-get source qemu=$version downloaded nothing"
log "[2/4] unpacking (with Debian's patches) and applying patches/qemu"
# dpkg-source cannot check the .dsc signature without debian-keyring and says so
# on stderr; apt already checked the files against the signed Sources index.
dpkg-source -q -x "$dsc" "$work/src" >"$work/dpkg-source.log" 2>&1 ||
  { cat "$work/dpkg-source.log" >&2; die "dpkg-source -x $(basename "$dsc") failed"; }
cd "$work/src"
for p in "$patches"/*.patch; do
  log "      $(basename "$p")"
  patch -p1 -s --no-backup-if-mismatch <"$p" || die "$(basename "$p") does not apply to qemu $version"
done
# The dfsg tarball has no firmware blobs: do not try to unpack the EDK2 ones.
sed -i 's/^\( *unpack_edk2_blobs = \)bzip2.found()/\1false/' meson.build

log "[3/4] configuring (x86_64-softmmu, vhost-user, TCG only)"
mkdir -p build
(cd build && ../configure --target-list=x86_64-softmmu --without-default-features \
  --enable-vhost-user --enable-fdt=system --disable-install-blobs --disable-docs \
  --disable-werror >"$work/configure.log" 2>&1) ||
  { tail -n 30 "$work/configure.log" >&2; die "configure failed (log: $work/configure.log)"; }

log "[4/4] compiling qemu-system-x86_64 with -j$jobs (about 3 minutes on 2 cores)"
# Progress: ninja's [n/N] counter, one line every 10 %.
set +e
ninja -C build -j"$jobs" qemu-system-x86_64 2>&1 | tee "$work/build.log" |
  awk -F'[][/]' '/^\[[0-9]+\/[0-9]+\]/ { p = int($2 * 10 / $3); if (p > last) { last = p; printf "build-qemu:       %d%% (%d/%d)\n", p * 10, $2, $3 > "/dev/stderr" } }'
rc=${PIPESTATUS[0]}
set -e
[[ $rc -eq 0 && -x build/qemu-system-x86_64 ]] ||
  { grep -m5 -B2 -A10 'error' "$work/build.log" >&2 || tail -n 30 "$work/build.log" >&2; die "build failed (log: $work/build.log)"; }
cp build/qemu-system-x86_64 "$out/qemu-system-x86_64.tmp"
mv -f "$out/qemu-system-x86_64.tmp" "$out/qemu-system-x86_64"
cd "$out"
rm -rf "$work"  # only the binary is kept (the tree is ~1 GB)
echo "$stamp" >"$out/stamp"
log "ready: $out/qemu-system-x86_64 (qemu $version + patches/qemu) in $((SECONDS - t0))s"
