# Shared by the guest-side test scripts (sourced: `. /iceblk/lib.sh`): the marker
# protocol the host reads on the serial console, and the disk and pattern helpers.
# The host side waits for "ICEBLK-E2E: PASS" or "ICEBLK-E2E: FAIL <reason>";
# /run/marker tells init the test script finished (tests/e2e/guest/init).
M=ICEBLK-E2E

# fail REASON...: report, mark the run finished, stop. A script may define
# on_fail() to print more context (it runs before the FAIL line's exit).
fail() {
  echo "$M: FAIL $*"
  : >/run/marker
  if command -v on_fail >/dev/null 2>&1; then on_fail; fi
  exit 1
}
step() { echo "$M: step $*"; }

# wait_for_disk DEV SIZE: wait up to 10 s for the virtio-blk disk to probe, then
# check it has SIZE bytes.
wait_for_disk() {
  _i=0
  while [ ! -b "$1" ]; do
    _i=$((_i + 1))
    [ "$_i" -gt 100 ] && fail "no $1 after 10 s (virtio-blk did not probe)"
    sleep 0.1
  done
  _got=$(blockdev --getsize64 "$1") || fail "blockdev --getsize64 $1"
  [ "$_got" = "$2" ] || fail "disk size $_got, expected $2"
}

# pattern_slices MODE SEED N SLICE DEV [pin]: N O_DIRECT iceblk-pattern processes at
# once, process k on [k*SLICE, (k+1)*SLICE) of DEV (pinned to CPU k with "pin");
# MODE is write or verify. Fails (returns 1) if any of them fails.
pattern_slices() {
  _pids=""
  _k=0
  while [ "$_k" -lt "$3" ]; do
    if [ "${6:-}" = pin ]; then
      taskset -c "$_k" iceblk-pattern "$1" "$2" $((_k * $4)) "$4" "$5" direct &
    else
      iceblk-pattern "$1" "$2" $((_k * $4)) "$4" "$5" direct &
    fi
    _pids="$_pids $!"
    _k=$((_k + 1))
  done
  _ok=0
  for _p in $_pids; do wait "$_p" || _ok=1; done
  return $_ok
}
