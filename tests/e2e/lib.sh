# Shared by tests/e2e/run_qemu_e2e.sh and scripts/demo.sh (source it, bash only):
# start a vhost-user-blk device (qemu-storage-daemon or iceblkd), boot the guest
# from scripts/prepare-guest.sh against it under TCG, stop everything.
# Callers call e2e_cleanup from an EXIT trap.
# shellcheck shell=bash

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_GUEST_DIR=${ICEBLK_GUEST_DIR:-$E2E_ROOT/build/guest}
E2E_DEVICE_PID=""
E2E_QEMU_PID=""
E2E_TAIL_PID=""

e2e_log() { echo "e2e: $*" >&2; }

# True when prepare-guest.sh has produced everything the guest needs.
e2e_guest_ready() {
  [[ -f $E2E_GUEST_DIR/vmlinuz && -f $E2E_GUEST_DIR/initrd.gz && -x $E2E_GUEST_DIR/iceblk-pattern ]]
}

# e2e_socket_holder PATH: "NAME (pid N)" of each process listening on the unix socket
# PATH (bound by that absolute path), one line each; nothing when none listens.
e2e_socket_holder() {
  ss -xlpH src "$1" 2>/dev/null |
    grep -oE '\("[^"]+",pid=[0-9]+' | sed -E 's/^\("([^"]+)",pid=([0-9]+)$/\1 (pid \2)/' | sort -u
}

# e2e_claim_socket PATH: makes PATH free for a new listener. A socket nobody listens
# on any more (its daemon died) is removed; a live listener is reported in one line
# that names it, and the call fails. Anything at PATH that is not a socket fails too.
e2e_claim_socket() {
  local sock=$1 holder
  [[ -e $sock || -L $sock ]] || return 0
  if [[ ! -S $sock ]]; then
    e2e_log "$sock exists and is not a socket; not touching it"
    return 1
  fi
  holder=$(e2e_socket_holder "$sock" | paste -sd, -)
  if [[ -n $holder ]]; then
    e2e_log "$sock is in use: held by $holder; stop that process or use another path"
    return 1
  fi
  rm -f "$sock"
  e2e_log "removed stale socket $sock (the daemon that made it is gone)"
}

# e2e_start_device KIND SOCKET IMAGE QUEUES LOG [ICEBLKD [EXTRA_ARGS...]]
# KIND is qsd (the reference, qemu-storage-daemon) or iceblkd (EXTRA_ARGS are passed
# on to it). Claims SOCKET (e2e_claim_socket) and waits for the device to bind it.
# One device at a time: e2e_stop_device (or e2e_cleanup) stops it.
e2e_start_device() {
  local kind=$1 sock=$2 img=$3 queues=$4 log=$5 bin=${6:-}
  shift $(($# < 6 ? $# : 6))
  [[ -z $E2E_DEVICE_PID ]] || { e2e_log "a device (pid $E2E_DEVICE_PID) is already running"; return 1; }
  e2e_claim_socket "$sock" || return 1
  case "$kind" in
    qsd)
      qemu-storage-daemon \
        --blockdev "driver=file,node-name=f0,filename=$img" \
        --blockdev driver=raw,node-name=d0,file=f0 \
        --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$sock,writable=on,num-queues=$queues" \
        >"$log" 2>&1 &
      ;;
    iceblkd)
      [[ -x $bin ]] || { e2e_log "iceblkd binary '$bin' not found"; return 1; }
      "$bin" --socket "$sock" --image "$img" --num-queues "$queues" "$@" >"$log" 2>&1 &
      ;;
    *) e2e_log "unknown device '$kind'"; return 1 ;;
  esac
  E2E_DEVICE_PID=$!
  local i
  for ((i = 0; i < 200; ++i)); do  # 10 s
    [[ -S $sock ]] && return 0
    if ! kill -0 "$E2E_DEVICE_PID" 2>/dev/null; then
      wait "$E2E_DEVICE_PID" || true
      E2E_DEVICE_PID=""
      e2e_log "$kind exited before creating $sock; its log:"
      sed 's/^/  | /' "$log" >&2
      return 1
    fi
    sleep 0.05
  done
  e2e_log "$kind did not create $sock within 10 s"
  return 1
}

# e2e_stop_device: SIGTERM, then wait up to 15 s. Fails if the device had to be
# killed or exited with a status other than 0 (or 143, the SIGTERM default).
e2e_stop_device() {
  [[ -n $E2E_DEVICE_PID ]] || return 0
  # The pid stays recorded until the device is gone: a signal that interrupts this
  # wait runs e2e_cleanup, which must still find it.
  local pid=$E2E_DEVICE_PID i rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; ++i)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    e2e_log "device (pid $pid) ignored SIGTERM for 15 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    E2E_DEVICE_PID=""
    return 1
  fi
  wait "$pid" || rc=$?
  E2E_DEVICE_PID=""
  if [[ $rc -ne 0 && $rc -ne 143 ]]; then
    e2e_log "device exited with status $rc after SIGTERM"
    return 1
  fi
  return 0
}

# e2e_boot_guest SOCKET QUEUES APPEND SERIAL_LOG TIMEOUT_S [follow]
# Boots the guest (TCG; never KVM, it hangs on these machines) with the disk on
# SOCKET and waits for it to power off. Returns QEMU's status (124: timed out).
# With "follow", the serial console is copied to stdout as it arrives.
e2e_boot_guest() {
  local sock=$1 queues=$2 append=$3 serial=$4 limit=$5 follow=${6:-}
  local mem=512 rc=0
  : >"$serial"
  # vhost-user needs guest RAM the device can map: a shared memfd backs all of it.
  # One vCPU per queue, so that blk-mq puts requests on every virtqueue.
  timeout -k 5 "$limit" qemu-system-x86_64 \
    -nodefaults -no-user-config -machine q35 -accel tcg -smp "$queues" -m "$mem" \
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
    -chardev "socket,id=c0,path=$sock" \
    -device "vhost-user-blk-pci,chardev=c0,num-queues=$queues" \
    -kernel "$E2E_GUEST_DIR/vmlinuz" -initrd "$E2E_GUEST_DIR/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet $append" \
    -display none -monitor none -serial "file:$serial" -no-reboot \
    </dev/null >"$serial.qemu" 2>&1 &
  E2E_QEMU_PID=$!
  if [[ $follow == follow ]]; then
    tail -n +1 -f --pid="$E2E_QEMU_PID" "$serial" &
    E2E_TAIL_PID=$!
  fi
  wait "$E2E_QEMU_PID" || rc=$?
  E2E_QEMU_PID=""
  if [[ -n $E2E_TAIL_PID ]]; then
    wait "$E2E_TAIL_PID" 2>/dev/null || true
    E2E_TAIL_PID=""
  fi
  if [[ -s $serial.qemu ]]; then
    e2e_log "qemu said:"
    sed 's/^/  | /' "$serial.qemu" >&2
  fi
  return $rc
}

# e2e_reap PID...: SIGTERM, up to 10 s to exit, then SIGKILL; waits for each (they
# are this shell's children), so that nothing is left when the caller exits.
e2e_reap() {
  local p i
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for ((i = 0; i < 100; ++i)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# Stops whatever is still running (guest, console follower, device) and waits for it;
# for the callers' EXIT trap, on every exit path (normal end, failure, signal).
e2e_cleanup() {
  local pids=()
  [[ -n $E2E_QEMU_PID ]] && pids+=("$E2E_QEMU_PID")  # timeout(1) passes SIGTERM on to QEMU
  [[ -n $E2E_TAIL_PID ]] && pids+=("$E2E_TAIL_PID")
  E2E_QEMU_PID=""
  E2E_TAIL_PID=""
  ((${#pids[@]} == 0)) || e2e_reap "${pids[@]}"
  e2e_stop_device || true
}
