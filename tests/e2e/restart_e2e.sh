#!/usr/bin/env bash
# A daemon restart loses nothing, with a real QEMU guest (issue 15, part 1).
#
#   tests/e2e/restart_e2e.sh ICEBLKD
#
# Stock QEMU with `-chardev socket,...,reconnect=1` and vhost-user-blk on iceblkd,
# whose completions are forced out of order (--test-reorder-completions: every 4th
# completion waits for 8 later ones, or 200 ms). The guest (guest/restart-test.sh)
# runs a write-then-verify loop over the whole disk: several O_DIRECT writers, a fresh
# seeded pattern each round, fsync, O_DIRECT verify. During the loop iceblkd is
# killed with SIGKILL and restarted 3 times; QEMU reconnects and hands the inflight
# region back (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), and the device resubmits what
# was in flight. Passes when the guest saw no I/O error and no hang, every round
# verified, the host finds the last round's pattern in the image, and at least one
# restart really had requests to resubmit (else the test proved nothing).
# Exit 77 (skipped) without a prepared guest (scripts/prepare-guest.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$here/lib.sh"

iceblkd=${1:?usage: restart_e2e.sh ICEBLKD}
if ! e2e_guest_ready; then
  echo "SKIP: no guest in $E2E_GUEST_DIR (run scripts/prepare-guest.sh)" >&2
  exit 77
fi
e2e_need_tools qemu-system-x86_64 timeout truncate
[[ -x $iceblkd ]] || { echo "FAIL: $iceblkd is not executable" >&2; exit 1; }

failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

e2e_begin iceblk-restart
size=$((32 << 20)) rounds=6 writers=4 kills=3 limit=360
seed=$(( (RANDOM << 15) | RANDOM ))
truncate -s "$size" "$img"
E2E_ICEBLKD_ARGS=(--no-ice --test-reorder-completions 4:8:200)
E2E_CHARDEV_PROPS=",reconnect=1"

guest_job=""
# On any way out: the guest runs in a background job; stop its QEMU (by pid) too.
e2e_before_cleanup() {
  [[ -n $guest_job ]] || return 0
  local c
  for c in $(ps -o pid= --ppid "$guest_job" 2>/dev/null); do kill -TERM "$c" 2>/dev/null || true; done
  kill -TERM "$guest_job" 2>/dev/null || true
  wait "$guest_job" 2>/dev/null || true
  guest_job=""
}

e2e_start_device iceblkd "$sock" "$img" 1 "$devlog.0" "$iceblkd" || exit 1
e2e_log "seed $seed: $rounds rounds over $((size >> 20)) MiB with $writers writers; $kills SIGKILL restarts"
e2e_boot_guest "$sock" 1 \
  "iceblk.test=restart iceblk.seed=$seed iceblk.size=$size iceblk.rounds=$rounds iceblk.writers=$writers" \
  "$serial" "$limit" &
guest_job=$!

# wait_serial TEXT SECONDS: until the guest printed TEXT (or it powered off).
wait_serial() {
  local i
  for ((i = 0; i < $2 * 10; ++i)); do
    grep -qF "$1" "$serial" 2>/dev/null && return 0
    kill -0 "$guest_job" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

for ((k = 1; k <= kills; ++k)); do
  # Rounds 2..4: kill in the middle of the writers (and their held completions).
  if ! wait_serial "ICEBLK-E2E: round $((k + 1)) start" 120; then
    fail "guest never reached round $((k + 1)) (restart $k)"
    break
  fi
  sleep "$((RANDOM % 2 + 1)).$((RANDOM % 10))"  # the writers are running by then (TCG)
  pid=$E2E_DEVICE_PID
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  E2E_DEVICE_PID=""
  e2e_log "restart $k: killed iceblkd (pid $pid) with SIGKILL during round $((k + 1))"
  sleep 1  # the outage: QEMU retries every second (reconnect=1)
  e2e_start_device iceblkd "$sock" "$img" 1 "$devlog.$k" "$iceblkd" || { fail "restart $k failed"; break; }
done

rc=0
wait "$guest_job" || rc=$?
guest_job=""
e2e_guest_verdict "$rc" "$limit" "$serial"
grep -F 'ICEBLK-E2E: round' "$serial.txt" | sed 's/^/  guest: /' >&2 || true
rounds_ok=$(grep -c '^ICEBLK-E2E: round [0-9]* ok' "$serial.txt" || true)
[[ $rounds_ok -eq $rounds ]] || fail "$rounds_ok of $rounds rounds verified"
if grep -qiE 'I/O error|blk_update_request|hung_task|blocked for more than' "$serial.txt"; then
  fail "guest kernel reported: $(grep -m1 -iE 'I/O error|blk_update_request|hung_task|blocked for more than' "$serial.txt")"
fi

# The host checks the last round's pattern in the image, independently of the guest.
last=$(sed -n 's/^ICEBLK-E2E: LAST-SEED \([0-9]*\)$/\1/p' "$serial.txt")
if [[ -n $last ]]; then
  "$E2E_GUEST_DIR/iceblk-pattern" verify "$last" 0 "$size" "$img" || fail "image does not hold the last round's pattern"
else
  fail "no LAST-SEED line from the guest"
fi

# Each restarted daemon got the inflight region back; at least one resubmitted.
resubmitted=0
for ((k = 1; k <= kills; ++k)); do
  [[ -f $devlog.$k ]] || continue
  grep -q 'inflight tracking: 1 queue' "$devlog.$k" || fail "restart $k: QEMU did not hand over an inflight region"
  n=$(sed -n 's/.*resubmitting \([0-9]*\) request.*/\1/p' "$devlog.$k" | head -n 1)
  e2e_log "restart $k: ${n:-0} request(s) resubmitted"
  [[ -n $n ]] && resubmitted=$((resubmitted + 1))
done
((resubmitted > 0)) || fail "no restart had requests in flight to resubmit: the test did not exercise recovery"

if ((failed)); then
  echo "FAIL: restart_e2e (logs: $tmp, set ICEBLK_E2E_KEEP=1 to keep them)" >&2
  exit 1
fi
echo "PASS: restart_e2e: $rounds rounds verified across $kills SIGKILL restarts ($resubmitted of them resubmitted in-flight requests)"
