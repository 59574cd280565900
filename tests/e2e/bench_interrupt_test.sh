#!/usr/bin/env bash
# The end-to-end benchmark stops every daemon it started however it is stopped
# (ctest e2e_bench_interrupt): bench/e2e/e2e_bench.py is started on small images, and
# once its four devices (iceblkd plain and ICE, qemu-storage-daemon raw and LUKS) are
# up and measuring, it is sent SIGTERM (as a service manager or `kill` would), and in
# a second run SIGINT to its process group (as Ctrl-C would). Afterwards no process
# refers to its work directory, and the directory is gone.
#   tests/e2e/bench_interrupt_test.sh BUILD_DIR     (BUILD_DIR holds tools/iceblkd/iceblkd)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?usage: $0 BUILD_DIR}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/iceblk-bench-int.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail=0
say() { echo "bench-interrupt: $*"; }
bad() { echo "bench-interrupt: FAIL: $*"; fail=1; }

for tool in qemu-storage-daemon qemu-img openssl; do
  command -v "$tool" >/dev/null || { say "$tool not found (scripts/install-deps.sh --e2e)"; exit 1; }
done

reset_sigint='import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])'

# interrupt_run NAME SIGNAL TARGET: TARGET is "process" or "group".
interrupt_run() {
  local name=$1 sig=$2 target=$3 log=$tmp/$1.log pid work="" rc=0 i
  # A command started with & in a script begins with SIGINT ignored; a terminal's
  # foreground job does not, so SIGINT's default is restored before the exec.
  setsid /usr/bin/python3 -c "$reset_sigint" /usr/bin/python3 "$root/bench/e2e/e2e_bench.py" --build-dir "$build" --runtime 30 \
    --workloads randread_4k_qd1 --size 64M --no-docs --out "$tmp/$name-out" >"$log" 2>&1 </dev/null &
  pid=$!
  # Wait until the first measurement runs: all four devices are up by then.
  for ((i = 0; i < 1200; ++i)); do
    grep -q 'started qsd LUKS' "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  work=$(sed -nE 's/.*creating [0-9]+ images of [0-9]+ MiB in (.*)$/\1/p' "$log")
  if ! grep -q 'started qsd LUKS' "$log" || [[ -z $work ]]; then
    bad "$name: the benchmark did not start its four devices; its log:"
    sed 's/^/    | /' "$log"
    kill -KILL -- "-$pid" 2>/dev/null || true
    return
  fi
  sleep 1  # into the first measurement
  if [[ $target == group ]]; then kill "-$sig" -- "-$pid"; else kill "-$sig" "$pid"; fi
  for ((i = 0; i < 300; ++i)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    bad "$name: still running 30 s after SIG$sig"
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  wait "$pid" || rc=$?
  ((rc != 0)) || bad "$name: exited 0 although it was interrupted"
  sleep 0.5
  local left
  left=$(pgrep -a -f -- "$work" || true)
  if [[ -n $left ]]; then
    bad "$name: processes left running after SIG$sig:"
    sed 's/^/    /' <<<"$left"
    pkill -KILL -f -- "$work" || true
  fi
  [[ ! -e $work ]] || bad "$name: work directory $work was left behind"
  [[ -n $left || -e $work ]] || say "$name: SIG$sig to the $target, exit status $rc, every device stopped, $work removed"
}

interrupt_run sigterm TERM process
interrupt_run sigint INT group
((fail == 0)) || exit 1
say "PASSED"
