#!/usr/bin/env bash
# The quick start's first command, tested as a new user runs it (ctest e2e_demo):
# scripts/demo.sh in a clean copy of the tree (no build/, no leftovers of earlier runs),
#   1. run twice in a row: each exits 0 and prints its OK lines (parts 1 to 3, the
#      third being fscrypt on the patched guest, whose builds are shared with the tree);
#   2. run a third time and interrupted with SIGINT (as Ctrl-C does, to the whole
#      process group) in the middle of its second part, while the ICE daemon is up;
#   3. run again right after the interrupted run: exits 0 with its OK lines;
#   4. a stale socket (its daemon is dead) on the demo's path is removed and the run
#      passes; a live listener on the path makes the run fail with one line naming it.
# After every run, no process the demo started may still be alive: the demo runs in
# a session of its own, and nothing may be left in that session or refer to the copy.
#   tests/e2e/demo_test.sh [--keep]      (--keep: leave the copy and the logs)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
keep=0
[[ ${1:-} == --keep ]] && keep=1

fail=0
say() { echo "demo-test: $*"; }
bad() { echo "demo-test: FAIL: $*"; fail=1; }

command -v python3 >/dev/null || { say "python3 not found (scripts/install-deps.sh --e2e)"; exit 1; }
command -v setsid >/dev/null || { say "setsid not found (util-linux)"; exit 1; }

copy=$(mktemp -d "${TMPDIR:-/tmp}/iceblk-demo-test.XXXXXX")
listener_pid=""
finish() {
  [[ -n $listener_pid ]] && kill "$listener_pid" 2>/dev/null
  # Whatever a broken demo left behind must not outlive the test either.
  pkill -KILL -f -- "$copy/" 2>/dev/null || true
  if ((keep)); then say "kept $copy"; else rm -rf "$copy"; fi
}
trap finish EXIT

# The tree as a fresh clone has it (tracked and new, not ignored, files), without build/.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$root" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -xf - -C "$copy"
else
  (cd "$root" && tar --exclude=./build --exclude=./out -cf - .) | tar -xf - -C "$copy"
fi
say "clean copy of the tree in $copy"
# The prepared guest (kernel package download, initramfs) is shared with the tree the
# test runs from: it is an input of the demo, not state of a run.
export ICEBLK_GUEST_DIR=${ICEBLK_GUEST_DIR:-$root/build/guest}
export ICEBLK_GUEST_ICE_DIR=${ICEBLK_GUEST_ICE_DIR:-$root/build/guest-ice}   # the ICE guest kernel
export ICEBLK_QEMU_DIR=${ICEBLK_QEMU_DIR:-$root/build/qemu-ice}              # the patched QEMU

# Every process the demo starts inherits this tag in its environment, whatever
# session or process group it moves to (part 3 runs in a group of its own).
# (The test's own processes do not carry it: it is set on the demo's command only.)
tag=$(basename "$copy")

# Processes the demo of session SID left alive, one "pid args" line each: in its
# session, carrying the tag, or naming the copy on their command line.
leftovers() {
  local sid=$1 f pid
  {
    ps -e -o sid=,pid=,args= | awk -v sid="$sid" '$1 == sid { $1 = ""; print substr($0, 2) }'
    pgrep -a -f -- "$copy/" || true
    for f in /proc/[0-9]*/environ; do
      pid=${f#/proc/}
      pid=${pid%/environ}
      if grep -qxzF "ICEBLK_DEMO_TEST_TAG=$tag" "$f" 2>/dev/null; then
        echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
      fi
    done
  } | sort -u | awk -v skip="${listener_pid:-none}" '$1 != skip'
}

check_no_leftovers() {
  local what=$1 sid=$2 left
  sleep 0.5  # a process killed by the demo's trap may still be reaped by init
  left=$(leftovers "$sid")
  if [[ -n $left ]]; then
    bad "$what left processes running:"
    sed 's/^/    /' <<<"$left"
    pkill -KILL -s "$sid" 2>/dev/null || true
  else
    say "$what: no process left running"
  fi
}

# run_demo NAME ok|fail [DEMO_ARGS...]: one run. "ok" asserts exit 0 and the OK lines
# (the fscrypt one too unless --quick); "fail" returns the demo's status.
run_demo() {
  local name=$1 mode=$2 log=$copy/$1.log rc=0
  shift 2
  say "$name: scripts/demo.sh $*"
  # setsid: a session (and process group) of its own, as a terminal would give it.
  ICEBLK_DEMO_TEST_TAG=$tag setsid --wait bash -c 'echo $$ >"$1.sid"; shift 2; exec "$0/scripts/demo.sh" "$@"' "$copy" "$copy/$name" _ "$@" \
    >"$log" 2>&1 </dev/null || rc=$?
  local sid
  sid=$(cat "$copy/$name.sid")
  if [[ $mode == fail ]]; then
    check_no_leftovers "$name" "$sid"
    return $rc
  fi
  if [[ $rc -ne 0 ]]; then
    bad "$name exited with status $rc; its last lines:"
    tail -n 25 "$log" | sed 's/^/    | /'
  fi
  local line
  local lines=(' demo OK: ' ' ICE: data written through the engine is ciphertext on the image')
  [[ " $* " == *" --quick "* ]] || lines+=(" fscrypt: the guest's inlinecrypt files were encrypted by iceblkd's engine")
  for line in "${lines[@]}"; do
    grep -qF -- "$line" "$log" || bad "$name did not print '${line# }...'"
  done
  check_no_leftovers "$name" "$sid"
  ((rc == 0)) && say "$name: exit 0, OK lines printed"
  return 0
}

run_demo run1 ok
run_demo run2 ok

# --- an interrupted run -----------------------------------------------------------
name=run3-interrupted
log=$copy/$name.log
say "$name: scripts/demo.sh, SIGINT in the middle of its second part"
# A command started with & in a script begins with SIGINT ignored (and bash cannot trap
# a signal ignored on entry); a terminal's foreground job does not, so SIGINT's default
# is restored before the demo starts.
ICEBLK_DEMO_TEST_TAG=$tag ICEBLK_DEMO_HOLD=60 setsid python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp("bash", ["bash", "-c", "echo $$ >\"$1.sid\"; exec \"$2/scripts/demo.sh\"", "_"] + sys.argv[1:])' \
  "$copy/$name" "$copy" >"$log" 2>&1 </dev/null &
demo_pid=$!
marker='$ iceblk write'   # printed once the ICE daemon answered `iceblk info`
interrupted=0
for ((i = 0; i < 6000; ++i)); do  # up to 10 min: the first run of a copy builds nothing new, but boots a guest
  if grep -qF -- "$marker" "$log" 2>/dev/null; then
    sid=$(cat "$copy/$name.sid")
    kill -INT -- "-$sid" 2>/dev/null && interrupted=1
    break
  fi
  kill -0 "$demo_pid" 2>/dev/null || break
  sleep 0.1
done
rc=0
for ((i = 0; i < 600; ++i)); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$demo_pid" 2>/dev/null; then
  bad "$name still running 60 s after SIGINT"
  kill -KILL -- "-$(cat "$copy/$name.sid")" 2>/dev/null || true
fi
wait "$demo_pid" || rc=$?
if ((interrupted)); then
  say "$name: interrupted in part 2, exit status $rc"
  ((rc != 0)) || bad "$name exited 0 although it was interrupted"
else
  bad "$name ended (status $rc) before it reached the middle of part 2; its last lines:"
  tail -n 15 "$log" | sed 's/^/    | /'
fi
check_no_leftovers "$name" "$(cat "$copy/$name.sid")"

run_demo run4-after-interrupt ok

# --- sockets left on the demo's paths ------------------------------------------------
run_dir=$copy/build/demo/run
# A stale socket: bound by a process that is gone. The demo removes it and runs.
python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$run_dir/ice.sock" ||
  bad "could not make a stale socket at $run_dir/ice.sock"
run_demo run5-stale-socket ok --quick
# A live listener: the demo must refuse in one clear line that names the holder.
python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); time.sleep(600)' "$run_dir/ice.sock" &
listener_pid=$!
for ((i = 0; i < 100; ++i)); do [[ -S $run_dir/ice.sock ]] && break; sleep 0.05; done
rc=0
run_demo run6-live-socket fail --quick || rc=$?
if ((rc == 0)); then
  bad "run6-live-socket exited 0 with a live listener on $run_dir/ice.sock"
elif ! grep -E "ice\.sock.*(held|in use).*python3.*pid $listener_pid|pid $listener_pid.*ice\.sock" \
    "$copy/run6-live-socket.log" >/dev/null; then
  bad "run6-live-socket did not name the process holding ice.sock (python3, pid $listener_pid); its last lines:"
  tail -n 10 "$copy/run6-live-socket.log" | sed 's/^/    | /'
else
  say "run6-live-socket: refused: $(grep -E 'ice\.sock' "$copy/run6-live-socket.log" | grep -E 'held|in use' | sed -n 1p)"
fi
kill -0 "$listener_pid" 2>/dev/null || bad "the demo killed a process it did not start (pid $listener_pid)"
kill "$listener_pid" 2>/dev/null || true
wait "$listener_pid" 2>/dev/null || true
listener_pid=""

if ((fail)); then
  say "FAILED (logs in $copy; rerun with --keep to keep them)"
  keep=1
  exit 1
fi
say "PASSED: 4 runs exited 0 with their OK lines, one was interrupted, one refused a live socket, nothing was left running"
