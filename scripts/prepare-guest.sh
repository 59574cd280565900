#!/usr/bin/env bash
# Prepares the Linux guest that the QEMU end-to-end tests and the demo boot:
#   $ICEBLK_GUEST_DIR (default build/guest)/vmlinuz        Debian's kernel
#   $ICEBLK_GUEST_DIR/initrd.gz                            busybox + modules + test scripts
#   $ICEBLK_GUEST_DIR/iceblk-pattern                       the pattern tool, for host checks
# With --ice, also the inline-encryption guest (tests/e2e/run_fscrypt_e2e.sh):
#   $ICEBLK_GUEST_ICE_DIR (default build/guest-ice)/vmlinuz  linux-source-6.1 + patches/linux
#                                                          (scripts/build-guest-kernel.sh)
#   $ICEBLK_GUEST_ICE_DIR/initrd.gz                        busybox + mke2fs + fscrypt-tool
#   $ICEBLK_GUEST_ICE_DIR/fscrypt-tool                     the same static tool, for the host
# Idempotent and cached: the kernel package is downloaded once (apt-get download of
# the linux-image-6.1.0-*-amd64 that linux-image-amd64 depends on), the initramfs is
# rebuilt only when one of its inputs changes. Packages come from
# scripts/install-deps.sh --e2e; this script installs nothing itself.
set -euo pipefail
ice=0
case "${1:-}" in
  --ice) ice=1 ;;
  "") ;;
  *) echo "usage: $0 [--ice]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
out=${ICEBLK_GUEST_DIR:-$root/build/guest}
ice_out=${ICEBLK_GUEST_ICE_DIR:-$root/build/guest-ice}
guest_src=$root/tests/e2e/guest
export PATH=$PATH:/usr/sbin:/sbin
# Modules to load, with their dependencies (resolved with modprobe --show-depends).
# The crypto ones let this stock kernel read fscrypt files in software: the
# independent check of what the inline-encryption guest wrote (run_fscrypt_e2e.sh).
modules=(virtio_pci virtio_blk crc32c_generic ext4 ecb xts cts essiv sha512_generic)

log() { echo "prepare-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio gzip c++ flock sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh --e2e)"
done
[[ -x /bin/busybox ]] || die "/bin/busybox missing (busybox-static; run scripts/install-deps.sh --e2e)"
[[ -x /sbin/mke2fs ]] || die "/sbin/mke2fs missing (e2fsprogs)"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9  # one preparation at a time (test.sh and demo.sh may race)

apt_update() {
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  log "apt-get update"
  $sudo apt-get update -qq
}

# --- 1. the kernel package ------------------------------------------------------
resolve_kernel() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ && !found { found = $2 } END { print found }'
}
kpkg=$(resolve_kernel || true)
if [[ -z "$kpkg" && ! -s "$out/kernel.pkg" ]]; then
  apt_update
  kpkg=$(resolve_kernel || true)
fi
if [[ -z "$kpkg" ]]; then
  kpkg=$(cat "$out/kernel.pkg")  # offline: keep the kernel we already have
  log "apt-cache cannot resolve linux-image-amd64; using cached $kpkg"
fi
# The cache directory names the module list too: a changed list fetches again.
kdir=$out/kernel/$kpkg-$(echo "${modules[*]}" | sha256sum | cut -c1-8)

if [[ ! -f "$kdir/done" ]]; then
  log "fetching $kpkg"
  rm -rf "$out/kernel"
  mkdir -p "$out/deb" "$kdir/modules"
  rm -f "$out"/deb/*.deb
  # apt-get download writes into the current directory; _apt cannot write there
  # when we are root, so it warns and downloads unsandboxed: harmless.
  if ! (cd "$out/deb" && apt-get download -q "$kpkg" 2>/dev/null); then
    apt_update
    (cd "$out/deb" && apt-get download -q "$kpkg")
  fi
  deb=$(ls "$out"/deb/"$kpkg"_*.deb)
  x=$out/extract
  rm -rf "$x" && mkdir -p "$x"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" ./boot ./lib/modules
  kver=$(ls "$x/lib/modules")
  [[ -n "$kver" && -f "$x/boot/vmlinuz-$kver" ]] || die "no vmlinuz in $deb"
  depmod -b "$x" "$kver"
  : >"$kdir/modules/load-order"
  for m in "${modules[@]}"; do
    # Lines are "insmod /path/x.ko" in load order; arch-accelerated crc32c is left
    # out (it needs SSE4.2, which the default TCG CPU lacks; the generic one works).
    modprobe -d "$x" -S "$kver" --show-depends "$m" |
      awk '$1 == "insmod" { print $2 }' | grep -v crc32c-intel |
      while read -r ko; do
        b=$(basename "$ko")
        if ! grep -qxF "$b" "$kdir/modules/load-order"; then
          cp "$ko" "$kdir/modules/$b"
          echo "$b" >>"$kdir/modules/load-order"
        fi
      done
  done
  cp "$x/boot/vmlinuz-$kver" "$kdir/vmlinuz"
  echo "$kver" >"$kdir/version"
  rm -rf "$x" "$out/deb"  # only the few files above are kept
  touch "$kdir/done"
  log "kernel $kver, modules: $(tr '\n' ' ' <"$kdir/modules/load-order")"
fi
echo "$kpkg" >"$out/kernel.pkg"
cp -f "$kdir/vmlinuz" "$out/vmlinuz.tmp" && mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"

# --- 2. the initramfs -----------------------------------------------------------
stamp=$( {
  echo "$kpkg"
  sha256sum "$0" "$guest_src"/* /bin/busybox /sbin/mke2fs /etc/mke2fs.conf
  c++ --version | sed -n 1p
} | sha256sum | cut -d' ' -f1)
# initrd_base DIR: busybox, mke2fs with its libraries, /init.
initrd_base() {
  local s=$1
  rm -rf "$s"
  mkdir -p "$s"/{bin,sbin,etc,dev,proc,sys,run,tmp,mnt,iceblk,lib/modules}
  cp /bin/busybox "$s/bin/busybox"
  # mke2fs from e2fsprogs (busybox's makes only ext2), with its shared libraries.
  cp /sbin/mke2fs "$s/sbin/mke2fs"
  cp /etc/mke2fs.conf "$s/etc/mke2fs.conf"
  ldd /sbin/mke2fs | awk '{ for (i = 1; i <= NF; ++i) if ($i ~ /^\//) print $i }' |
    while read -r lib; do
      mkdir -p "$s$(dirname "$lib")"
      cp -L "$lib" "$s$lib"
    done
  cp "$guest_src/init" "$s/init"
  chmod 755 "$s/init"
}

# pack DIR OUT: the cpio.gz initramfs of DIR.
pack() {
  (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$2.tmp"
  mv -f "$2.tmp" "$2"
  rm -rf "$1"
}

# --- 3. the inline-encryption guest (--ice) ---------------------------------------
prepare_ice() {
  "$root/scripts/build-guest-kernel.sh"
  local st
  st=$( {
    cat "$ice_out/stamp"
    sha256sum "$0" "$guest_src"/* /bin/busybox /sbin/mke2fs /etc/mke2fs.conf
    cc --version | sed -n 1p
  } | sha256sum | cut -d' ' -f1)
  if [[ -f "$ice_out/initrd.gz" && -x "$ice_out/fscrypt-tool" && "$(cat "$ice_out/initrd.stamp" 2>/dev/null)" == "$st" ]]; then
    return 0
  fi
  log "building the inline-encryption initramfs"
  # Static, so the same binary also runs on the host (plaintext scan of the image).
  cc -std=gnu11 -O2 -static -s -Wall -Wextra -Werror -o "$ice_out/fscrypt-tool.tmp" "$guest_src/fscrypt-tool.c"
  mv -f "$ice_out/fscrypt-tool.tmp" "$ice_out/fscrypt-tool"
  local s=$ice_out/initrd.d
  initrd_base "$s"
  cp "$ice_out/fscrypt-tool" "$s/bin/fscrypt-tool"
  : >"$s/lib/modules/load-order"  # everything is built into this kernel
  cp "$guest_src/lib.sh" "$guest_src/fscrypt-test.sh" "$s/iceblk/"
  chmod 755 "$s"/iceblk/*.sh
  pack "$s" "$ice_out/initrd.gz"
  echo "$st" >"$ice_out/initrd.stamp"
  log "ready: $ice_out/vmlinuz, $ice_out/initrd.gz ($(du -k "$ice_out/initrd.gz" | cut -f1) KiB)"
}

if [[ -f "$out/initrd.gz" && -x "$out/iceblk-pattern" && "$(cat "$out/initrd.stamp" 2>/dev/null)" == "$stamp" ]]; then
  ((ice)) && prepare_ice
  exit 0
fi

log "building the initramfs"
s=$out/initrd.d
initrd_base "$s"
# The pattern tool: static, so the same binary also runs on the host.
c++ -std=c++20 -O2 -static -s -Wall -Wextra -o "$out/iceblk-pattern.tmp" "$guest_src/iceblk_pattern.cc"
mv -f "$out/iceblk-pattern.tmp" "$out/iceblk-pattern"
cp "$out/iceblk-pattern" "$s/bin/iceblk-pattern"
# fscrypt-tool (static C) for fscrypt-check.sh: the stock kernel's view of an image
# the inline-encryption guest wrote.
cc -std=gnu11 -O2 -static -s -Wall -Wextra -Werror -o "$s/bin/fscrypt-tool" "$guest_src/fscrypt-tool.c"
cp "$kdir"/modules/* "$s/lib/modules/"
cp "$guest_src/lib.sh" "$guest_src/disk-test.sh" "$guest_src/demo.sh" "$guest_src/fscrypt-check.sh" "$guest_src/restart-test.sh" \
  "$s/iceblk/"
chmod 755 "$s"/iceblk/*.sh
pack "$s" "$out/initrd.gz"
echo "$stamp" >"$out/initrd.stamp"
log "ready: $out/vmlinuz, $out/initrd.gz ($(du -k "$out/initrd.gz" | cut -f1) KiB)"
((ice)) && prepare_ice
exit 0
