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
# /sys/.../features is one character per feature bit, bit 0 first.
names=""
bits=$(cat /sys/block/vda/device/features)
n=0
while [ -n "$bits" ]; do
  b=${bits%"${bits#?}"}; bits=${bits#?}
  if [ "$b" = 1 ]; then
    case $n in
      1) f=SIZE_MAX ;; 2) f=SEG_MAX ;; 4) f=GEOMETRY ;; 5) f=RO ;; 6) f=BLK_SIZE ;;
      9) f=FLUSH ;; 10) f=TOPOLOGY ;; 11) f=CONFIG_WCE ;; 12) f=MQ ;; 13) f=DISCARD ;;
      14) f=WRITE_ZEROES ;; 22) f=ICE ;; 28) f=INDIRECT_DESC ;; 29) f=EVENT_IDX ;;
      32) f=VERSION_1 ;; 33) f=ACCESS_PLATFORM ;; 34) f=RING_PACKED ;; *) f="bit$n" ;;
    esac
    names="$names $f"
  fi
  n=$((n + 1))
done
say "virtio-blk features negotiated:$names"

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
