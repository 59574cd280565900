#!/bin/sh
# Guest side of scripts/demo.sh (kernel command line: iceblk.test=demo).
# Shows the virtio-blk disk served by the host's device daemon being used:
# its size and features, a fresh ext4 file system, a file written and read back.
dev=/dev/vda
mnt=/mnt
say() { echo "[guest] $*"; }
die() { echo "ICEBLK-DEMO: FAIL $*"; : >/run/marker; exit 1; }

i=0
while [ ! -b "$dev" ]; do
  i=$((i + 1)); [ "$i" -gt 100 ] && die "no $dev"
  sleep 0.1
done
say "kernel $(uname -r), $(nproc) CPU(s)"
say "block devices:"
for b in /sys/block/*; do
  n=${b##*/}
  echo "          $n  $(($(cat "$b/size") * 512 / 1048576)) MiB  logical block $(cat "$b/queue/logical_block_size") B"
done
say "$dev: $(blockdev --getsize64 $dev) bytes, $(ls /sys/block/vda/mq | wc -l) virtqueue(s)"
say "virtio feature bits offered and accepted: $(cat /sys/block/vda/device/features)"

say "making a fresh ext4 file system on $dev"
/sbin/mke2fs -F -q -t ext4 -L iceblk-demo -E nodiscard "$dev" || die "mke2fs"
mount -t ext4 "$dev" "$mnt" || die "mount"
df -h "$mnt" | sed 's/^/          /'
echo "Hello from a Linux guest on an iceblk disk ($(date -u))" >"$mnt/hello.txt"
dd if=/dev/urandom of="$mnt/random.bin" bs=1M count=8 2>/dev/null || die "write"
before=$(sha256sum <"$mnt/random.bin" | cut -d' ' -f1)
say "wrote hello.txt and random.bin (8 MiB, sha256 $before)"
sync
umount "$mnt" || die "umount"
echo 3 >/proc/sys/vm/drop_caches
say "unmounted, dropped caches, mounting again"
mount -t ext4 -o ro "$dev" "$mnt" || die "remount"
ls -l "$mnt" | sed 's/^/          /'
say "hello.txt: $(cat "$mnt/hello.txt")"
after=$(sha256sum <"$mnt/random.bin" | cut -d' ' -f1)
say "random.bin sha256 after re-reading from the device: $after"
umount "$mnt"
[ "$before" = "$after" ] || die "random.bin changed on disk"
: >/run/marker
echo "ICEBLK-DEMO: OK $before"
