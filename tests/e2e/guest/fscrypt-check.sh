#!/bin/sh
# Guest side of the independent check in tests/e2e/run_fscrypt_e2e.sh
# (iceblk.test=fscrypt-check), run by Debian's stock kernel, which has no inline
# encryption: mount the image the inline-encryption guest wrote, add its master key
# and verify every file of its manifest with the kernel's software fscrypt.
# Inputs, from a per-run initramfs segment: /iceblk/run/master-key.hex and
# /iceblk/run/manifest.sha256 (paths relative to the file system root).
set -u
export PATH=/sbin:/bin
mnt=/mnt
. /iceblk/lib.sh
mount -t ext4 -o ro /dev/vda "$mnt" || fail "mount"
id=$(fscrypt-tool add-key "$mnt" /iceblk/run/master-key.hex) || fail "add-key"
n=$(wc -l </iceblk/run/manifest.sha256)
(cd "$mnt" && sha256sum -c -s /iceblk/run/manifest.sha256) || fail "the stock kernel reads different data"
echo "ICEBLK-INFO: stock kernel $(uname -r): $n files verified with software fscrypt"
dmesg | grep 'fscrypt:' | sed 's/^/ICEBLK-INFO: dmesg: /'
fscrypt-tool remove-key "$mnt" "$id" >/dev/null
umount "$mnt"
echo "ICEBLK-E2E: PASS"
: >/run/marker
