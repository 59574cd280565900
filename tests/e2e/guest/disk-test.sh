#!/bin/sh
# Guest side of the QEMU e2e test (kernel command line: iceblk.test=disk).
#
# Layout of the disk (size S, from iceblk.size):
#   [0, S)     pattern written, then read back and checked, in three ways
#   [0, S/2)   then overwritten by a fresh ext4 file system holding known files
#   [S/2, S)   keeps the pattern: the host verifies it in the image afterwards
# The host also runs e2fsck -fn on the image and reads the files with debugfs.
#
# Parameters: iceblk.seed (pattern seed), iceblk.size (expected disk bytes),
# iceblk.queues (expected number of hardware queues of /dev/vda), iceblk.md5
# (md5 of the whole pattern, computed by the host with the same tool).
# Prints "ICEBLK-E2E: PASS" or "ICEBLK-E2E: FAIL <reason>".
. /iceblk/lib.sh
dev=/dev/vda
mnt=/mnt

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

seed=${ICEBLK_seed:?iceblk.seed missing}
size=${ICEBLK_size:?iceblk.size missing}
queues=${ICEBLK_queues:-1}
want_md5=${ICEBLK_md5:?iceblk.md5 missing}
data_seed=$((seed + 1))
hello="hello from the iceblk e2e guest, seed $seed"

wait_for_disk "$dev" "$size"
got=$(ls /sys/block/vda/mq | wc -l)
[ "$got" = "$queues" ] || fail "$got hardware queues, expected $queues"
step "found $dev: $size bytes, $queues queue(s), features $(cat /sys/block/vda/device/features)"

# One O_DIRECT writer per CPU, pinned: blk-mq maps each CPU to its own virtqueue,
# so with N queues and N CPUs every queue carries requests, concurrently.
ncpu=$(nproc)
slice=$((size / ncpu))
[ $((slice % 4096)) -eq 0 ] || fail "size $size does not split into 4 KiB slices for $ncpu CPUs"
parallel() {  # parallel write|verify: the pattern over [0, size), slice per CPU
  pattern_slices "$1" "$seed" "$ncpu" "$slice" "$dev" pin
}

step "write pattern: $ncpu direct writer(s)"
parallel write || fail "pattern write"

step "read back through the page cache, after drop_caches"
drop_caches
got=$(dd if="$dev" bs=1M 2>/dev/null | md5sum | cut -d' ' -f1)
echo "$M: PATTERN-MD5 $got"
[ "$got" = "$want_md5" ] || fail "pattern md5 $got, host expects $want_md5"
drop_caches
iceblk-pattern verify "$seed" 0 "$size" "$dev" || fail "pattern verify (buffered)"

step "verify pattern: $ncpu direct reader(s)"
parallel verify || fail "pattern verify (direct)"

fs_kib=$((size / 2 / 1024))
step "mke2fs -t ext4 over the first $fs_kib KiB"
/sbin/mke2fs -F -q -t ext4 -L iceblk-e2e \
  -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$dev" "${fs_kib}k" ||
  fail "mke2fs"
mount -t ext4 "$dev" "$mnt" || fail "mount ext4"
echo "$hello" >"$mnt/hello.txt" || fail "write hello.txt"
mkdir "$mnt/dir" || fail "mkdir"
iceblk-pattern gen "$data_seed" 0 4M >"$mnt/dir/data.bin" || fail "write data.bin"
n=1
while [ "$n" -le 32 ]; do
  echo "file $n of seed $seed" >"$mnt/dir/f$n" || fail "write f$n"
  n=$((n + 1))
done
sync
umount "$mnt" || fail "umount"

step "remount after drop_caches and read the files back"
drop_caches
mount -t ext4 -o ro "$dev" "$mnt" || fail "remount ext4"
[ "$(cat "$mnt/hello.txt")" = "$hello" ] || fail "hello.txt differs"
want=$(iceblk-pattern gen "$data_seed" 0 4M | sha256sum | cut -d' ' -f1)
got=$(sha256sum <"$mnt/dir/data.bin" | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "data.bin sha256 $got, expected $want"
[ "$(cat "$mnt/dir/f32")" = "file 32 of seed $seed" ] || fail "f32 differs"
echo "$M: FILE-SHA256 /dir/data.bin $got"
umount "$mnt" || fail "umount (ro)"

step "the second half still holds the pattern"
drop_caches
iceblk-pattern verify "$seed" $((size / 2)) $((size / 2)) "$dev" ||
  fail "pattern in the second half was disturbed"

: >/run/marker
echo "$M: PASS"
