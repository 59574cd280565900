#!/bin/sh
# Guest side of the daemon-restart e2e test (kernel command line: iceblk.test=restart;
# host side: tests/e2e/restart_e2e.sh). The host kills iceblkd with SIGKILL and
# restarts it while this loop runs; QEMU reconnects (chardev reconnect=1) and the
# device resubmits what was in flight. Nothing here may see an I/O error or hang.
#
# Each round writes a fresh seeded pattern over the whole disk with several writers
# at once (O_DIRECT, each writer reusing one buffer for its consecutive chunks, and
# fsync at the end), then verifies it with O_DIRECT readers (so the data comes from
# the device, not the page cache). Reused buffers are what makes a wrong resume
# visible: a request completed twice lets the writer refill its buffer before the
# device really reads it. The last round's pattern is also checked by the host.
#
# Parameters: iceblk.seed, iceblk.size (disk bytes), iceblk.rounds, iceblk.writers.
# Prints "ICEBLK-E2E: round N start" / "... round N ok" for the host to pace its
# kills, and finally "ICEBLK-E2E: PASS" or "ICEBLK-E2E: FAIL <reason>".
. /iceblk/lib.sh
dev=/dev/vda

seed=${ICEBLK_seed:?iceblk.seed missing}
size=${ICEBLK_size:?iceblk.size missing}
rounds=${ICEBLK_rounds:-6}
writers=${ICEBLK_writers:-4}

wait_for_disk "$dev" "$size"
slice=$((size / writers))
[ $((slice % 4096)) -eq 0 ] || fail "size $size does not split into 4 KiB slices for $writers writers"

# all MODE SEED: one iceblk-pattern per slice, all at once; fails if any fails.
all() { pattern_slices "$1" "$2" "$writers" "$slice" "$dev"; }

r=1
while [ "$r" -le "$rounds" ]; do
  s=$((seed + r))
  echo "$M: round $r start"
  all write "$s" || fail "round $r: pattern write (seed $s)"
  all verify "$s" || fail "round $r: pattern verify (seed $s)"
  echo "$M: round $r ok"
  r=$((r + 1))
done
echo "$M: LAST-SEED $((seed + rounds))"
echo "$M: PASS"
: >/run/marker
