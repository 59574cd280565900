#!/usr/bin/env bash
# End-to-end test: a real Linux guest (QEMU, TCG) uses a vhost-user-blk disk.
#   run_qemu_e2e.sh --device qsd|iceblkd [--iceblkd PATH] [--queues 1|2] [--verbose]
# qsd is qemu-storage-daemon, the reference device, which proves the test itself.
# The guest (tests/e2e/guest/disk-test.sh) writes a position-dependent pattern over
# the whole disk with one direct-I/O writer per queue, reads it back three ways,
# makes ext4 over the first half and checks its files after a remount. Then the host
# stops the device with SIGTERM and checks the image on its own: the pattern in the
# second half, e2fsck -fn, and the files' contents through debugfs.
# Exit status: 0 pass, 1 fail, 77 skipped (guest not prepared: scripts/prepare-guest.sh).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

device="" iceblkd="" queues=1 verbose=""
size=$((64 << 20))
timeout_s=${ICEBLK_E2E_TIMEOUT:-300}
while (($#)); do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --iceblkd) iceblkd=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --verbose) verbose=follow; shift ;;
    *) echo "usage: $0 --device qsd|iceblkd [--iceblkd PATH] [--queues N] [--verbose]" >&2; exit 2 ;;
  esac
done
[[ $device == qsd || $device == iceblkd ]] || { echo "$0: --device qsd|iceblkd" >&2; exit 2; }
[[ $queues =~ ^[1-8]$ ]] || { echo "$0: --queues 1..8" >&2; exit 2; }
if [[ $device == iceblkd && -z $iceblkd ]]; then
  iceblkd=$E2E_ROOT/build/test/tools/iceblkd/iceblkd
fi
if ! e2e_guest_ready; then
  echo "SKIP: no guest in $E2E_GUEST_DIR; run scripts/prepare-guest.sh" >&2
  exit 77
fi
e2e_need_tools qemu-system-x86_64 qemu-storage-daemon e2fsck debugfs timeout

e2e_begin iceblk-e2e
pattern=$E2E_GUEST_DIR/iceblk-pattern
seed=$((1000000 + RANDOM * 32768 + RANDOM))  # fresh per run: no stale data can pass
name="e2e[$device, $queues queue(s)]"
start=$SECONDS

failed=0
fail() {
  echo "FAIL $name: $*"
  failed=1
}
show_logs() {
  echo "--- last serial lines (ICEBLK_E2E_KEEP=1 keeps $tmp) ---"
  tail -n 40 "$serial" 2>/dev/null || true
  echo "--- device log ---"
  tail -n 20 "$devlog" 2>/dev/null || true
}

truncate -s "$size" "$img"
pattern_md5=$("$pattern" gen "$seed" 0 "$size" | md5sum | cut -d' ' -f1)
e2e_start_device "$device" "$sock" "$img" "$queues" "$devlog" "$iceblkd" ||
  { echo "FAIL $name: device did not start"; exit 1; }

rc=0
e2e_boot_guest "$sock" "$queues" "iceblk.test=disk iceblk.seed=$seed iceblk.size=$size iceblk.queues=$queues iceblk.md5=$pattern_md5" \
  "$serial" "$timeout_s" "$verbose" || rc=$?
boot_s=$((SECONDS - start))
# --- the guest's verdict --------------------------------------------------------
e2e_guest_verdict "$rc" "$timeout_s" "$serial"

# --- the host's own checks of the image -----------------------------------------
if [[ $failed -eq 0 ]]; then
  e2e_check_disk "$img" "$size" "$seed" "$pattern_md5" "$serial.txt"
fi

if [[ $failed -ne 0 ]]; then
  show_logs
  echo "RESULT $name: FAIL (${boot_s}s)"
  exit 1
fi
grep '^ICEBLK-E2E: step' "$serial.txt" | sed 's/^ICEBLK-E2E: step /  guest: /'
echo "  host: pattern md5, second-half pattern, e2fsck -fn, debugfs file contents OK"
echo "RESULT $name: PASS (guest ${boot_s}s, total $((SECONDS - start))s)"
