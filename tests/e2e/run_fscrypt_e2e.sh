#!/usr/bin/env bash
# End-to-end test of inline encryption: a Linux guest's fscrypt (patched QEMU and
# kernel, patches/) uses the device's inline crypto engine, and Linux's own software
# fscrypt reads what it wrote, and the other way round.
#   run_fscrypt_e2e.sh --device iceblkd|qsd [--iceblkd PATH] [--queues N]
#                      [--max-slots N] [--queue-depth N] [--readers N]
#                      [--keep DIR] [--verbose]
# iceblkd: the guest must register a blk-crypto profile, fscrypt must say
# "blk-crypto (native)", and iceblkd's counters (printed when the export closes)
# must agree with what the guest did. qsd (qemu-storage-daemon, no ICE): the
# profile must not register and inlinecrypt silently stays in software.
# Either way: the plaintext of no file is on the image, e2fsck -fn is clean, and
# Debian's stock kernel (software fscrypt only; scripts/prepare-guest.sh) on the stock
# QEMU and qemu-storage-daemon reads every file of the manifest back identically.
#   --max-slots N    keyslots iceblkd offers (default 32); with fewer slots than
#                    parallel readers (--readers, default 8) the guest must evict
#                    and reprogram
#   --queue-depth N  virtio_blk.queue_depth in the guest: a small one puts every tag
#                    in use while requests wait for keyslots
#   --inline-crypto off   QEMU hides the ICE (vhost-user-blk-pci,inline-crypto=off):
#                    the guest must see a plain disk and stay in software
#   --algorithms L   iceblkd --algorithms L; with none that blk-crypto knows (e.g.
#                    aes-128-xts) the guest must register no profile and stay in software
#   --keep DIR       leave DIR/disk.img, DIR/master-key.hex, DIR/manifest.sha256
# Exit status: 0 pass, 1 fail, 77 skipped (scripts/build-qemu.sh and
# scripts/prepare-guest.sh --ice have not run).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

device="" iceblkd="" queues=1 slots=32 depth="" readers=8 keep="" verbose="" props="" algorithms=""
size=$((256 << 20))
timeout_s=${ICEBLK_E2E_TIMEOUT:-900}
usage() {
  echo "usage: $0 --device iceblkd|qsd [--iceblkd PATH] [--queues N] [--max-slots N] [--queue-depth N]" \
    "[--readers N] [--keep DIR] [--verbose]" >&2
  exit 2
}
while (($#)); do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --iceblkd) iceblkd=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --max-slots) slots=$2; shift 2 ;;
    --queue-depth) depth=$2; shift 2 ;;
    --readers) readers=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --inline-crypto) [[ $2 == on || $2 == off ]] || usage; props=",inline-crypto=$2"; shift 2 ;;
    --algorithms) algorithms=$2; shift 2 ;;
    --verbose) verbose=follow; shift ;;
    *) usage ;;
  esac
done
[[ $device == qsd || $device == iceblkd ]] || usage
[[ $queues =~ ^[1-8]$ && $slots =~ ^[0-9]+$ && $readers =~ ^[1-9][0-9]?$ ]] || usage
[[ -z $depth || $depth =~ ^[1-9][0-9]*$ ]] || usage
if [[ $device == iceblkd && -z $iceblkd ]]; then
  iceblkd=$E2E_ROOT/build/test/tools/iceblkd/iceblkd
fi
if ! e2e_ice_ready; then
  echo "SKIP: no patched QEMU ($E2E_QEMU_ICE) or inline-encryption guest ($E2E_GUEST_ICE_DIR);" \
    "run scripts/build-qemu.sh and scripts/prepare-guest.sh --ice" >&2
  exit 77
fi
e2e_need_tools qemu-storage-daemon e2fsck timeout cpio gzip od
tool=$E2E_GUEST_ICE_DIR/fscrypt-tool

e2e_begin iceblk-fscrypt
keyfile=$tmp/master-key.hex
name="fscrypt[$device, $queues queue(s)"
[[ $device == iceblkd ]] && name+=", $slots slots"
[[ -n $depth ]] && name+=", queue depth $depth"
[[ -n $props ]] && name+=", ${props#,}"
[[ -n $algorithms ]] && name+=", algorithms $algorithms"
name+="]"
start=$SECONDS
failed=0
fail() {
  echo "FAIL $name: $*"
  failed=1
}

# A fresh master key and token per run: nothing stale can pass.
od -An -tx1 -N64 /dev/urandom | tr -d ' \n' >"$keyfile"
[[ $(wc -c <"$keyfile") -eq 128 ]] || { echo "FAIL $name: could not make a key"; exit 1; }
token=t$(od -An -tx1 -N6 /dev/urandom | tr -d ' \n')
e2e_ice_initrd "$keyfile" "$tmp/initrd.gz"
truncate -s "$size" "$img"

expect=native
[[ $device == qsd || $props == ,inline-crypto=off || -n $algorithms ]] && expect=software
append="iceblk.test=fscrypt iceblk.token=$token iceblk.expect=$expect iceblk.slots=$slots iceblk.readers=$readers"
[[ -n $depth ]] && append+=" virtio_blk.queue_depth=$depth"
E2E_ICEBLKD_ARGS=(--max-slots "$slots")
[[ -n $algorithms ]] && E2E_ICEBLKD_ARGS+=(--algorithms "$algorithms")
e2e_start_device "$device" "$sock" "$img" "$queues" "$devlog" "$iceblkd" ||
  { echo "FAIL $name: device did not start"; exit 1; }

rc=0
e2e_boot_guest_ice "$sock" "$queues" "$props" "$tmp/initrd.gz" "$append" "$serial" "$timeout_s" "$verbose" || rc=$?
guest_s=$((SECONDS - start))
e2e_guest_verdict "$rc" "$timeout_s" "$serial"
gstat() { awk -v k="$1" '$1 == "ICEBLK-STAT:" && $2 == k { print $3 }' "$serial.txt"; }

# --- the device's counters --------------------------------------------------------
counters=""
if [[ $failed -eq 0 && $device == iceblkd && $expect == software ]]; then
  # The guest did all its crypto in software: the device must have done none.
  read -r enc dec prog evict <<<"$(e2e_ice_counters "$devlog")" || true
  counters="requests encrypted ${enc:-?}, decrypted ${dec:-?}; keys programmed ${prog:-?}, evicted ${evict:-?}"
  [[ "${enc:-x} ${dec:-x} ${prog:-x} ${evict:-x}" == "0 0 0 0" ]] ||
    fail "the guest stayed in software, but iceblkd reports $counters"
elif [[ $failed -eq 0 && $device == iceblkd ]]; then
  read -r enc dec prog evict <<<"$(e2e_ice_counters "$devlog")" || true
  if [[ -z ${evict:-} ]]; then
    fail "iceblkd printed no ICE counters when the export closed"
  else
    counters="requests encrypted $enc, decrypted $dec; keys programmed $prog, evicted $evict"
    inline_files=$(gstat inline_files) total_files=$(gstat software_files)
    perfile_inline=$(gstat perfile_inline) perfile_total=$(gstat perfile_total)
    # Every file written through inlinecrypt (none is empty) took at least one
    # encrypted OUT; every file read back through inlinecrypt at least one IN.
    ((enc >= inline_files)) || fail "$enc encrypted requests for $inline_files files written through inlinecrypt"
    ((dec >= total_files)) || fail "$dec decrypted requests for $total_files files read through inlinecrypt"
    # Per-file keys: each file written in phase 1 and each file read in phase 3
    # needs its own key in a slot (the phase 1 keys went with the unmount).
    ((prog >= perfile_inline + perfile_total)) ||
      fail "$prog keys programmed for $perfile_inline + $perfile_total per-file keys"
    ((evict >= 1 && evict <= prog)) || fail "$evict keys evicted for $prog programmed"
    # With fewer slots than keys in use at once, slots must have been reused.
    ((prog > slots)) || fail "$prog keys programmed into $slots slots: no slot was reused"
  fi
fi
if [[ $device == qsd ]] && grep -q 'ICE counters' "$devlog"; then
  fail "qemu-storage-daemon log mentions ICE counters?"
fi

# --- the host's view: ciphertext only -------------------------------------------
if [[ $failed -eq 0 ]]; then
  all=$("$tool" find "$img" "ICEBLK-PT $token ")
  control=$("$tool" find "$img" "ICEBLK-PT $token plainctl ")
  ((control >= 1)) || fail "the unencrypted control file is not on the image: the scan does not work"
  ((all == control)) || fail "$((all - control)) plaintext records of encrypted files are on the image"
  if ! out=$(e2fsck -fn "$img" 2>&1); then
    fail "image: e2fsck -fn found problems:"$'\n'"$out"
  fi
  nman=$(grep -c '^ICEBLK-MANIFEST: ' "$serial.txt" || true)
  [[ $nman -eq $(($(gstat software_files) + 1)) ]] ||
    fail "manifest has $nman lines for $(gstat software_files) encrypted files + the control file"
fi

# --- an independent reader: Debian's kernel, stock QEMU, qemu-storage-daemon ------
if [[ $failed -eq 0 ]]; then
  if ! e2e_guest_ready; then
    fail "no stock guest in $E2E_GUEST_DIR for the independent check (scripts/prepare-guest.sh)"
  else
    sed -n 's/^ICEBLK-MANIFEST: //p' "$serial.txt" >"$tmp/manifest.sha256"
    e2e_initrd_segment "$E2E_GUEST_DIR/initrd.gz" "$tmp/check-initrd.gz" "$keyfile" "$tmp/manifest.sha256"
    e2e_start_device qsd "$sock" "$img" 1 "$tmp/check-device.log" ||
      { echo "FAIL $name: qemu-storage-daemon did not start"; exit 1; }
    rc=0
    E2E_INITRD=$tmp/check-initrd.gz \
      e2e_boot_guest "$sock" 1 "iceblk.test=fscrypt-check" "$tmp/check.log" 300 || rc=$?
    e2e_stop_device || fail "qemu-storage-daemon did not stop cleanly"
    tr -d '\r' <"$tmp/check.log" >"$tmp/check.txt"
    if [[ $rc -ne 0 ]]; then
      fail "stock guest: qemu exited with status $rc"
    elif ! grep -qx 'ICEBLK-E2E: PASS' "$tmp/check.txt"; then
      fail "stock kernel: $(grep -m1 '^ICEBLK-E2E: FAIL' "$tmp/check.txt" || echo 'no marker')"
      tail -n 20 "$tmp/check.txt"
    else
      checked=$(sed -n 's/^ICEBLK-INFO: \(stock kernel .*\)/\1/p' "$tmp/check.txt")
    fi
  fi
fi

if [[ -n $keep ]]; then
  mkdir -p "$keep"
  cp --sparse=always "$img" "$keep/disk.img"
  cp "$keyfile" "$keep/master-key.hex"
  sed -n 's/^ICEBLK-MANIFEST: //p' "$serial.txt" >"$keep/manifest.sha256"
  cp "$serial.txt" "$keep/serial.log"
  echo "kept $keep: disk.img, master-key.hex, manifest.sha256, serial.log"
fi

if [[ $failed -ne 0 ]]; then
  echo "--- last serial lines (ICEBLK_E2E_KEEP=1 keeps $tmp) ---"
  grep -v '^ICEBLK-MANIFEST' "$serial.txt" | tail -n 60 || true
  echo "--- device log ---"
  tail -n 20 "$devlog" 2>/dev/null || true
  echo "RESULT $name: FAIL (${guest_s}s)"
  exit 1
fi
grep -E '^ICEBLK-E2E: step|^ICEBLK-INFO: (blk-crypto|policy|virtqueues|dmesg: fscrypt: .* blk-crypto|dmesg: virtio_blk virtio0: (inline|no inline))' "$serial.txt" |
  sed 's/^ICEBLK-E2E: step /  guest: /; s/^ICEBLK-INFO: /  guest: /'
[[ -n $counters ]] && echo "  device: $counters"
echo "  host: no plaintext of $(gstat software_files) encrypted files on the image (control file found), e2fsck -fn clean"
echo "  host: $checked"
echo "RESULT $name: PASS (guest ${guest_s}s, total $((SECONDS - start))s)"
