#!/bin/sh
# Guest side of tests/e2e/run_fscrypt_e2e.sh (busybox sh, run by /init for
# iceblk.test=fscrypt): fscrypt on /dev/vda, written through the device's inline
# crypto engine (mount -o inlinecrypt) and read back with Linux's own software
# fscrypt (mount without inlinecrypt), then the other way round.
#
# Kernel command line (exported by /init):
#   iceblk.token=T        per-run word in every plaintext record (the host scans the image)
#   iceblk.expect=native  the disk must have a blk-crypto profile with iceblk.slots keyslots,
#                         and fscrypt must say "using blk-crypto (native)"
#   iceblk.expect=software  the disk must have no profile; inlinecrypt stays in software
#   iceblk.slots=N        keyslots the device offers (native)
#   iceblk.readers=N      parallel readers in the last verification (default 8)
#   iceblk.small=N        small files per tree and phase (default 120)
# The master key is /iceblk/run/master-key.hex, from a per-run initramfs segment:
# never on a command line, never printed.
#
# Serial protocol: "ICEBLK-E2E: step ...", "ICEBLK-E2E: FAIL ...", "ICEBLK-E2E: PASS",
# "ICEBLK-MANIFEST: <sha256>  <path>", "ICEBLK-INFO: ...", "ICEBLK-STAT: name value".
set -u
export PATH=/sbin:/bin
tool=/bin/fscrypt-tool
key=/iceblk/run/master-key.hex
mnt=/mnt
dev=/dev/vda
tok=${ICEBLK_token:?iceblk.token missing}
expect=${ICEBLK_expect:-native}
slots=${ICEBLK_slots:-0}
readers=${ICEBLK_readers:-8}
nsmall=${ICEBLK_small:-120}
manifest=/run/manifest
trees="xts lblk64 essiv"

. /iceblk/lib.sh
on_fail() { dmesg | tail -n 30 | sed 's/^/ICEBLK-INFO: dmesg: /'; }
info() { echo "ICEBLK-INFO: $*"; }

policy_of() {
  case "$1" in
    xts) echo "aes-256-xts aes-256-cts" ;;            # per-file keys
    lblk64) echo "aes-256-xts aes-256-cts iv_ino_lblk_64" ;;
    essiv) echo "aes-128-cbc aes-128-cts" ;;          # AES-128-CBC-ESSIV, per-file keys
  esac
}

# write_tree DIR PHASE: small files, multi-MiB files, a sparse, an appended, an
# overwritten file, and deleted files. Every byte comes from `fscrypt-tool gen`,
# whose 64-byte records name the run token, the file and the offset.
write_tree() {
  d=$1 p=$2
  mkdir -p "$d/small-$p" "$d/del-$p" || return 1
  i=0
  while [ "$i" -lt "$nsmall" ]; do
    $tool gen "$tok" "s$p$i" $((1 + i * 331 % 9000)) >"$d/small-$p/f$i" || return 1
    i=$((i + 1))
  done
  $tool gen "$tok" "b1$p" 3M >"$d/big1-$p" || return 1
  $tool gen "$tok" "b2$p" 5M >"$d/big2-$p" || return 1
  # sparse: 64 KiB at 0 and 64 KiB at 8 MiB, a hole in between
  $tool gen "$tok" "sp$p" 64K >"$d/sparse-$p" || return 1
  $tool gen "$tok" "sq$p" 64K | dd of="$d/sparse-$p" bs=4096 seek=2048 conv=notrunc 2>/dev/null || return 1
  # appended after it reached the disk
  $tool gen "$tok" "ap$p" 100000 >"$d/append-$p" || return 1
  sync
  $tool gen "$tok" "aq$p" 50001 >>"$d/append-$p" || return 1
  # overwritten in the middle after it reached the disk
  $tool gen "$tok" "ov$p" 1M >"$d/over-$p" || return 1
  sync
  $tool gen "$tok" "ow$p" 64K | dd of="$d/over-$p" bs=4096 seek=64 conv=notrunc 2>/dev/null || return 1
  # deleted: 20 written and synced, every other one removed
  i=0
  while [ "$i" -lt 20 ]; do
    $tool gen "$tok" "d$p$i" $((4096 * (i + 1))) >"$d/del-$p/f$i" || return 1
    i=$((i + 1))
  done
  sync
  i=0
  while [ "$i" -lt 20 ]; do
    rm -f "$d/del-$p/f$i"
    i=$((i + 2))
  done
}

do_mount() {  # do_mount inline|software
  if [ "$1" = inline ]; then
    mount -t ext4 -o inlinecrypt "$dev" "$mnt" || fail "mount -o inlinecrypt"
  else
    mount -t ext4 "$dev" "$mnt" || fail "mount (software fscrypt)"
  fi
  grep " $mnt " /proc/mounts | sed 's/^/ICEBLK-INFO: mounted: /'
  id=$($tool add-key "$mnt" "$key") || fail "add-key"
  st=$($tool key-status "$mnt" "$id") || fail "key-status"
  [ "$st" = present ] || fail "key status after add-key is '$st'"
}

do_umount() {
  umount "$mnt" || fail "umount"
  echo 3 >/proc/sys/vm/drop_caches
}

# verify_all N: sha256sum -c of the manifest with N parallel readers.
verify_all() {
  n=$1
  rm -f /run/part.*
  awk -v n="$n" '{ print > ("/run/part." (NR % n)) }' "$manifest"
  pids=""
  for part in /run/part.*; do
    (cd "$mnt" && sha256sum -c -s "$part") &
    pids="$pids $!"
  done
  bad=0
  for pid in $pids; do
    wait "$pid" || bad=$((bad + 1))
  done
  rm -f /run/part.*
  [ "$bad" -eq 0 ]
}

count_files() { wc -l <"$manifest" | tr -d ' '; }

record_manifest() {
  (cd "$mnt" && find . -type f | sed 's|^\./||' | sort | xargs sha256sum) >"$manifest" || fail "sha256sum"
}

# --- the disk and its crypto profile ---------------------------------------------
step "mkfs.ext4 -O encrypt,stable_inodes"
/sbin/mke2fs -q -t ext4 -b 4096 -O encrypt,stable_inodes -F "$dev" || fail "mke2fs"
dmesg | grep -E 'virtio_blk|inline encryption' | sed 's/^/ICEBLK-INFO: dmesg: /'
info "virtqueues: $(ls -d /sys/block/vda/mq/* | wc -l), tags per queue: $(cat /sys/block/vda/mq/0/nr_tags)"
cdir=/sys/block/vda/queue/crypto
if [ "$expect" = native ]; then
  [ -d "$cdir" ] || fail "no blk-crypto profile on vda ($cdir missing)"
  ks=$(cat "$cdir/num_keyslots")
  info "blk-crypto profile: $ks keyslots, max_dun_bits $(cat "$cdir/max_dun_bits"), modes: $(cd "$cdir/modes" && for m in *; do printf '%s=%s ' "$m" "$(cat "$m")"; done)"
  [ "$ks" = "$slots" ] || fail "num_keyslots $ks, device offers $slots"
else
  [ ! -d "$cdir" ] || fail "vda has a blk-crypto profile ($cdir) on a device without ICE"
  dmesg | grep -q 'no inline encryption' || fail "dmesg does not say why vda has no inline encryption"
  [ "$(dmesg | grep -c 'no inline encryption')" -eq 1 ] || fail "the no-inline-encryption line is not printed once"
fi

# --- 1. write through inlinecrypt -------------------------------------------------
do_mount inline
$tool gen "$tok" plainctl 64K >"$mnt/plain-control" || fail "plain-control"
for t in $trees; do
  mkdir "$mnt/$t" || fail "mkdir $t"
  # shellcheck disable=SC2046
  $tool set-policy "$mnt/$t" "$id" $(policy_of "$t") || fail "set-policy $t"
  info "policy $t: $($tool get-policy "$mnt/$t")"
done
step "write trees (inlinecrypt)"
for t in $trees; do
  write_tree "$mnt/$t" a || fail "writing $t (inlinecrypt)"
done
sync
record_manifest
info "files written through inlinecrypt: $(count_files)"
info "plaintext of xts/big1-a: $(head -c 63 "$mnt/xts/big1-a")"
echo "ICEBLK-STAT: ino_xts_big1 $(stat -c %i "$mnt/xts/big1-a")"
echo "ICEBLK-STAT: inline_files $(grep -c -v plain-control "$manifest")"
echo "ICEBLK-STAT: perfile_inline $(grep -c -E '  (xts|essiv)/' "$manifest")"
do_umount

# --- 2. read with software fscrypt, write more -----------------------------------
step "verify with software fscrypt (no inlinecrypt)"
do_mount software
verify_all 1 || fail "software fscrypt reads different data than inlinecrypt wrote"
step "write trees (software fscrypt)"
for t in $trees; do
  write_tree "$mnt/$t" b || fail "writing $t (software)"
done
sync
record_manifest
echo "ICEBLK-STAT: software_files $(grep -c -v plain-control "$manifest")"
echo "ICEBLK-STAT: perfile_total $(grep -c -E '  (xts|essiv)/' "$manifest")"
do_umount

# --- 3. read everything through inlinecrypt, many files at once --------------------
step "verify everything through inlinecrypt ($readers parallel readers)"
do_mount inline
verify_all "$readers" || fail "inlinecrypt reads different data than was written"
step "key status and removal"
$tool remove-key "$mnt" "$id" | sed 's/^/ICEBLK-INFO: remove-key: /'
st=$($tool key-status "$mnt" "$id")
[ "$st" = absent ] || fail "key status after remove-key is '$st'"
[ ! -e "$mnt/xts/big1-a" ] || fail "xts/big1-a is visible by name without the key"
info "without the key, xts/ holds: $(ls "$mnt/xts" | head -n 3 | tr '\n' ' ')..."
do_umount

# --- what fscrypt used ----------------------------------------------------------
dmesg | grep 'fscrypt' | sed 's/^/ICEBLK-INFO: dmesg: /'
if [ "$expect" = native ]; then
  for m in AES-256-XTS AES-128-CBC-ESSIV; do
    dmesg | grep -q "fscrypt: $m using blk-crypto (native)" || fail "dmesg lacks 'fscrypt: $m using blk-crypto (native)'"
  done
else
  ! dmesg | grep -q 'fscrypt: .* using blk-crypto' || fail "fscrypt used blk-crypto on a device without ICE"
fi
! dmesg | grep -q 'blk-crypto-fallback' || fail "fscrypt used blk-crypto-fallback"
while read -r h p; do
  echo "ICEBLK-MANIFEST: $h  $p"
done <"$manifest"
echo "ICEBLK-E2E: PASS"
: >/run/marker
