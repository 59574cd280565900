#!/usr/bin/env bash
# The Debian package, installed the way a user installs it: scripts/package.sh
# builds iceblk_<version>_amd64.deb (lintian: no errors), then in a clean Debian
# root (debootstrap --variant=minbase, nothing else in it) `apt-get install
# ./iceblk_*.deb` pulls its dependencies from Debian's archive, and there
# `iceblkd --version` runs and iceblkd serves a short session to the packaged
# iceblk CLI (info, verify), then exits 0 on SIGTERM. libiceblk-dev's
# dependencies are resolved too (apt-get --simulate).
#   tests/packaging/deb_test.sh BUILD_DIR               (ctest: deb_package)
# The clean root is made once and cached as a tarball named by the hash of what
# makes it (suite, variant, mirror, debootstrap version):
#   $ICEBLK_CACHE_DIR (default ~/.cache/iceblk)/debootstrap-<hash>.tar.gz
# Needs root (chroot, mounts in a private mount namespace) and Debian's archive;
# exits 77 (ctest: skipped) without root.
set -euo pipefail
root_dir=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
suite=bookworm variant=minbase
mirror=${ICEBLK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${ICEBLK_CACHE_DIR:-${HOME:-/root}/.cache/iceblk}
log() { echo "deb_test: $*"; }
fail() { echo "deb_test: FAIL: $*" >&2; exit 1; }
if [[ $(id -u) -ne 0 ]]; then log "skipped: needs root (chroot)"; exit 77; fi
for tool in debootstrap unshare chroot apt-get lintian; do
  command -v "$tool" >/dev/null || fail "$tool missing (scripts/install-deps.sh --package)"
done
tmp=$(mktemp -d /tmp/iceblk-deb.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# 1. The packages (lintian errors fail here).
"$root_dir/scripts/package.sh" --build-dir "$build" --out "$tmp/out"
deb=$(ls "$tmp"/out/iceblk_*_amd64.deb)
devdeb=$(ls "$tmp"/out/libiceblk-dev_*_amd64.deb)

# 2. The clean root, from the cache or made now.
key=$(printf '%s\n' "$suite" "$variant" "$mirror" "$(dpkg-query -W -f='${Version}' debootstrap)" v1 |
      sha256sum | cut -c1-16)
tarball=$cache/debootstrap-$suite-$variant-$key.tar.gz
mkdir -p "$cache"
exec 8>"$cache/.debootstrap.lock"
flock 8
if [[ ! -s $tarball ]]; then
  log "making the clean root (debootstrap $variant $suite, once; cached as $tarball)"
  start=$SECONDS
  debootstrap --variant="$variant" "$suite" "$tmp/mk" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$tmp/debootstrap.log"; fail "debootstrap"; }
  rm -rf "$tmp"/mk/var/cache/apt/archives/*.deb "$tmp"/mk/var/lib/apt/lists/*
  tar -C "$tmp/mk" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$tmp/mk"
  log "clean root made in $((SECONDS - start)) s ($(du -h "$tarball" | cut -f1))"
fi
flock -u 8
chroot_dir=$tmp/root
mkdir -p "$chroot_dir"
tar -C "$chroot_dir" -xzf "$tarball"
cp "$deb" "$devdeb" "$chroot_dir/tmp/"
cp -L /etc/resolv.conf "$chroot_dir/etc/resolv.conf" 2>/dev/null || true
echo "deb $mirror $suite main" >"$chroot_dir/etc/apt/sources.list"
# Some mirrors serve a dated snapshot of the archive.
printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
  >"$chroot_dir/etc/apt/apt.conf.d/99iceblk-test"

# 3. Inside it: install, --version, a short serve. Mounts live in a private mount
# namespace, so they vanish with it.
cat >"$chroot_dir/tmp/inside.sh" <<'INSIDE'
#!/bin/bash
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin
! command -v iceblkd >/dev/null || { echo "iceblkd already there: not a clean root" >&2; exit 1; }
apt-get update -qq
apt-get install -y -qq --no-install-recommends /tmp/iceblk_*_amd64.deb >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }
apt-get install -s -qq /tmp/libiceblk-dev_*_amd64.deb >/tmp/apt-dev.log 2>&1 || { cat /tmp/apt-dev.log; exit 1; }
echo "--- iceblkd --version"
iceblkd --version
iceblk --version | sed -n 1p
test -f /usr/share/man/man8/iceblkd.8.gz && test -f /usr/share/man/man1/iceblk.1.gz
test -f /usr/lib/systemd/system/iceblkd@.service && test -f /usr/lib/systemd/system/iceblkd@.socket
test -d /etc/iceblk
echo "--- serve"
iceblkd --socket /tmp/vm0.sock --image /tmp/disk.img --size 32M 2>/tmp/iceblkd.log &
pid=$!
for _ in $(seq 200); do [ -S /tmp/vm0.sock ] && break; sleep 0.05; done
iceblk info -s /tmp/vm0.sock | sed -n 1,5p
iceblk verify -s /tmp/vm0.sock --length 1M
kill -TERM $pid
wait $pid
cat /tmp/iceblkd.log
grep -q "shut down cleanly" /tmp/iceblkd.log
echo "--- remove"
apt-get purge -y -qq iceblk >/dev/null
! test -e /usr/sbin/iceblkd
INSIDE
chmod +x "$chroot_dir/tmp/inside.sh"
start=$SECONDS
unshare --mount --propagation private bash -c '
  set -e
  r=$1
  mount -t proc proc "$r/proc"
  mount --rbind /dev "$r/dev"
  mount -t tmpfs tmpfs "$r/run"
  chroot "$r" /tmp/inside.sh
' _ "$chroot_dir" || fail "installing or running the package in the clean root"
log "install + serve in the clean root: $((SECONDS - start)) s"
log "$(basename "$deb"): $(du -k "$deb" | cut -f1) KiB"
log "2 passed, 0 failed"
