#!/usr/bin/env bash
# A QEMU guest keeps running while exports are added and removed beside it.
#   guest_churn_e2e.sh --iceblkd BIN --iceblk BIN
# iceblkd serves the guest's disk (export vm0, slots [0, 32)) and has a control
# socket. While the guest runs tests/e2e/guest/disk-test.sh (the same test as
# run_qemu_e2e.sh), the host adds exports in slots [32, 64) over QMP (`iceblk ctl`),
# runs `iceblk verify` (encrypted write, read back, no plaintext on the medium) on
# each, and removes it, round after round. The guest must pass, every round must
# pass, and vm0's statistics must show no error.
# Exit status: 0 pass, 1 fail, 77 skipped (guest not prepared: scripts/prepare-guest.sh).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../../e2e/lib.sh"

iceblkd="" iceblk=""
while (($#)); do
  case "$1" in
    --iceblkd) iceblkd=$2; shift 2 ;;
    --iceblk) iceblk=$2; shift 2 ;;
    *) echo "usage: $0 --iceblkd BIN --iceblk BIN" >&2; exit 2 ;;
  esac
done
if ! e2e_guest_ready; then
  echo "SKIP: no guest in $E2E_GUEST_DIR; run scripts/prepare-guest.sh" >&2
  exit 77
fi
e2e_need_tools qemu-system-x86_64

e2e_begin iceblk-churn
churn_pid=""
e2e_before_cleanup() {
  [[ -z $churn_pid ]] || { touch "$tmp/stop"; wait "$churn_pid" 2>/dev/null || true; }
}

size=$((64 << 20))
img=$tmp/disk.img
sock=$tmp/vm0.sock
ctl=$tmp/ctl.sock
truncate -s "$size" "$img"
pattern=$E2E_GUEST_DIR/iceblk-pattern
seed=$((1000000 + RANDOM * 32768 + RANDOM))
pattern_md5=$("$pattern" gen "$seed" 0 "$size" | md5sum | cut -d' ' -f1)
e2e_start_device iceblkd "$sock" "$img" 1 "$tmp/device.log" "$iceblkd" --control "$ctl" --max-slots 32 ||
  { echo "FAIL: device did not start"; exit 1; }
for ((i = 0; i < 100; ++i)); do [[ -S $ctl ]] && break; sleep 0.05; done

ctl_cmd() { "$iceblk" ctl -c "$ctl" "$@"; }

# The churn, in the background until $tmp/stop exists: one result line per round.
churn() {
  local round=0 i name
  while [[ ! -e $tmp/stop ]]; do
    round=$((round + 1))
    for i in 0 1 2 3 4 5 6 7; do
      name=churn$i
      ctl_cmd add-export "name=$name" "socket=$tmp/$name.sock" "image=$tmp/$name.img" size=4M \
        "slot_offset=$((32 + i * 4))" max_slots=4 >/dev/null || { echo "FAIL round $round: add $name"; return; }
    done
    for i in 0 1 2 3 4 5 6 7; do
      "$iceblk" verify -s "$tmp/churn$i.sock" --length 256K >"$tmp/verify.log" 2>&1 ||
        { echo "FAIL round $round: verify churn$i: $(tail -n 3 "$tmp/verify.log")"; return; }
    done
    for i in 0 1 2 3 4 5 6 7; do
      ctl_cmd remove-export "name=churn$i" >/dev/null || { echo "FAIL round $round: remove churn$i"; return; }
      [[ ! -e $tmp/churn$i.sock ]] || { echo "FAIL round $round: churn$i.sock left behind"; return; }
      rm -f "$tmp/churn$i.img"
    done
    echo "round $round ok"
  done
}
churn >"$tmp/churn.log" 2>&1 &
churn_pid=$!

failed=0
rc=0
e2e_boot_guest "$sock" 1 "iceblk.test=disk iceblk.seed=$seed iceblk.size=$size iceblk.queues=1 iceblk.md5=$pattern_md5" \
  "$tmp/serial.log" "${ICEBLK_E2E_TIMEOUT:-400}" || rc=$?
touch "$tmp/stop"
wait "$churn_pid" || true
churn_pid=""
[[ $rc -eq 0 ]] || { echo "FAIL: qemu exited with status $rc"; failed=1; }
tr -d '\r' <"$tmp/serial.log" >"$tmp/serial.txt"
grep -qx 'ICEBLK-E2E: PASS' "$tmp/serial.txt" || { echo "FAIL: the guest did not pass"; failed=1; }
grep -q '^FAIL' "$tmp/churn.log" && { echo "FAIL: $(grep -m1 '^FAIL' "$tmp/churn.log")"; failed=1; }
rounds=$(grep -c '^round .* ok$' "$tmp/churn.log" || true)
[[ $rounds -ge 1 ]] || { echo "FAIL: no churn round completed while the guest ran"; failed=1; }
errors=$(ctl_cmd query-stats export=vm0 --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(sum(q["errors"].values()) for e in s["exports"] for q in e["queues"]))')
[[ $errors == 0 ]] || { echo "FAIL: vm0 has $errors request errors"; failed=1; }
e2e_stop_device || { echo "FAIL: device did not stop cleanly"; failed=1; }
if ((failed)); then
  tail -n 30 "$tmp/serial.txt" || true
  tail -n 30 "$tmp/device.log" || true
  cat "$tmp/churn.log"
  echo "RESULT guest_churn: FAIL"
  exit 1
fi
echo "RESULT guest_churn: PASS (guest passed, $rounds churn rounds of 8 exports, vm0 errors 0)"
