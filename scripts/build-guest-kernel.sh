#!/usr/bin/env bash
# Builds the guest kernel for inline encryption: Debian 12's linux-source-6.1 with
# patches/linux/*.patch (virtio_blk: blk-crypto with the inline crypto engine),
# `make tinyconfig` plus patches/linux/guest-kernel.config (virtio, ext4, fscrypt,
# BLK_INLINE_ENCRYPTION, and *no* BLK_INLINE_ENCRYPTION_FALLBACK, so that fscrypt
# can only use the device's engine or its own software crypto).
#   $ICEBLK_GUEST_ICE_DIR (default build/guest-ice)/vmlinuz
#   $ICEBLK_GUEST_ICE_DIR/config                          the .config it was built with
# Cached: rebuilt only when the patches, the config fragment, this script or the
# linux-source-6.1 package version change (stamp). The first build takes about 3
# minutes on 2 cores. Packages: scripts/install-deps.sh --guest-ice. Called by
# scripts/prepare-guest.sh --ice.
#   scripts/build-guest-kernel.sh [--print-stamp]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${ICEBLK_GUEST_ICE_DIR:-$root/build/guest-ice}
patches=$root/patches/linux
fragment=$patches/guest-kernel.config
jobs=${ICEBLK_JOBS:-2}
tarball=/usr/src/linux-source-6.1.tar.xz

log() { echo "build-guest-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in make gcc flex bison bc tar xz patch sha256sum flock dpkg-query; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh --guest-ice)"
done
[[ -f $tarball ]] || die "$tarball missing (linux-source-6.1; run scripts/install-deps.sh --guest-ice)"
[[ -f /usr/include/libelf.h ]] || die "libelf-dev missing (run scripts/install-deps.sh --guest-ice)"
[[ -f $fragment ]] || die "$fragment missing"
ls "$patches"/*.patch >/dev/null 2>&1 || die "no patches in $patches"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
stamp=$( {
  echo "linux-source-6.1 $version"
  sha256sum "$0" "$fragment" "$patches"/*.patch | sed "s|  $root/|  |"
} | sha256sum | cut -d' ' -f1)
if [[ ${1:-} == --print-stamp ]]; then
  echo "$stamp"
  exit 0
fi
if [[ -f $out/vmlinuz && "$(cat "$out/stamp" 2>/dev/null)" == "$stamp" ]]; then
  log "up to date: $out/vmlinuz (linux-source-6.1 $version + patches/linux)"
  exit 0
fi

t0=$SECONDS
work=$out/work
rm -rf "$work" "$out/vmlinuz" "$out/stamp"
mkdir -p "$work"
log "[1/4] unpacking linux-source-6.1 $version"
tar -xf "$tarball" -C "$work"
src=$work/linux-source-6.1
cd "$src"
log "[2/4] applying patches/linux"
for p in "$patches"/*.patch; do
  log "      $(basename "$p")"
  patch -p1 -s --no-backup-if-mismatch <"$p" || die "$(basename "$p") does not apply to linux-source-6.1 $version"
done

log "[3/4] configuring: tinyconfig + $(basename "$fragment")"
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig
# Every option of the fragment must have survived olddefconfig (a missing
# dependency would drop it silently).
while read -r line; do
  case "$line" in
    CONFIG_*) grep -qxF "$line" .config || die "config: '$line' did not survive olddefconfig" ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      ! grep -q "^$opt=" .config || die "config: $opt must stay unset" ;;
  esac
done <"$fragment"

log "[4/4] compiling bzImage with -j$jobs (about 3 minutes on 2 cores)"
# Progress: every 20 s, how many of the about 1600 build steps are done.
make -j"$jobs" bzImage >"$work/build.log" 2>&1 &
mpid=$!
while kill -0 "$mpid" 2>/dev/null; do
  sleep 20
  kill -0 "$mpid" 2>/dev/null || break
  log "      $(grep -cE '^  (CC|AS|LD|AR|GEN|HOSTCC) ' "$work/build.log" || true) build steps done"
done
rc=0
wait "$mpid" || rc=$?
[[ $rc -eq 0 && -f arch/x86/boot/bzImage ]] ||
  { grep -m5 -B2 -A10 'error' "$work/build.log" >&2 || tail -n 30 "$work/build.log" >&2; die "kernel build failed"; }
cp arch/x86/boot/bzImage "$out/vmlinuz.tmp"
cp .config "$out/config"
mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"
cd "$out"
rm -rf "$work"  # only the kernel is kept
echo "$stamp" >"$out/stamp"
log "ready: $out/vmlinuz ($(du -k "$out/vmlinuz" | cut -f1) KiB) in $((SECONDS - t0))s"
