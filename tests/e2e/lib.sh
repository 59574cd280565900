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
# Extra iceblkd arguments for e2e_start_device (e.g. --max-slots 4).
E2E_ICEBLKD_ARGS=()
# Appended to the vhost-user -chardev (e.g. ",reconnect=1": QEMU reconnects when the
# device goes away; tests/e2e/restart_e2e.sh).
E2E_CHARDEV_PROPS=""
# The QEMU that e2e_boot_guest runs: ICEBLK_QEMU overrides the system one (e.g. the
# patched build/qemu-ice/qemu-system-x86_64, which needs the packaged firmware).
E2E_QEMU=${ICEBLK_QEMU:-qemu-system-x86_64}

e2e_log() { echo "e2e: $*" >&2; }

# True when prepare-guest.sh has produced everything the guest needs.
e2e_guest_ready() {
  [[ -f $E2E_GUEST_DIR/vmlinuz && -f $E2E_GUEST_DIR/initrd.gz && -x $E2E_GUEST_DIR/iceblk-pattern ]]
}

# e2e_need_tools TOOL...: exits 1, naming the first tool that is not installed.
e2e_need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "FAIL: $t not found (scripts/install-deps.sh --e2e)" >&2; exit 1; }
  done
}

# e2e_begin PREFIX: a fresh work directory, and the traps that stop everything this
# run started (e2e_cleanup) on every way out and remove the directory (kept when the
# run failed and ICEBLK_E2E_KEEP is set). A caller with more to stop defines
# e2e_before_cleanup. Sets the run's paths: tmp (the directory), img, sock, serial
# and devlog in it.
E2E_TMP=""
e2e_begin() {
  E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  trap e2e_finish EXIT
  trap 'exit 130' INT TERM
  tmp=$E2E_TMP img=$E2E_TMP/disk.img sock=$E2E_TMP/dev.sock serial=$E2E_TMP/serial.log devlog=$E2E_TMP/device.log
}
e2e_finish() {
  local rc=$?
  if declare -F e2e_before_cleanup >/dev/null; then e2e_before_cleanup; fi
  e2e_cleanup
  if [[ $rc -ne 0 && -n ${ICEBLK_E2E_KEEP:-} ]]; then
    echo "kept $E2E_TMP" >&2
  else
    rm -rf "$E2E_TMP"
  fi
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
      "$bin" --socket "$sock" --image "$img" --num-queues "$queues" "${E2E_ICEBLKD_ARGS[@]}" "$@" >"$log" 2>&1 &
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

# e2e_run_qemu QEMU FW KERNEL INITRD DEVICE_PROPS SOCKET QUEUES APPEND SERIAL_LOG TIMEOUT_S [follow]
# Boots a guest (TCG; never KVM, it hangs on these machines) with the disk on SOCKET
# and waits for it to power off. Returns QEMU's status (124: timed out). FW is "fw"
# for a QEMU built here (it needs the packaged firmware), "" for the system one.
# DEVICE_PROPS is appended to -device vhost-user-blk-pci (e.g. ",inline-crypto=off").
# With "follow", the serial console is copied to stdout as it arrives.
e2e_run_qemu() {
  local qemu=$1 fw=$2 kernel=$3 initrd=$4 props=$5 sock=$6 queues=$7 append=$8 serial=$9
  local limit=${10} follow=${11:-} mem=512 rc=0 fw_args=()
  [[ $fw == fw ]] && fw_args=(-L /usr/share/qemu -L /usr/share/seabios)
  : >"$serial"
  # vhost-user needs guest RAM the device can map: a shared memfd backs all of it.
  # One vCPU per queue, so that blk-mq puts requests on every virtqueue.
  timeout -k 5 "$limit" "$qemu" "${fw_args[@]}" \
    -nodefaults -no-user-config -machine q35 -accel tcg -smp "$queues" -m "$mem" \
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem \
    -chardev "socket,id=c0,path=$sock$E2E_CHARDEV_PROPS" \
    -device "vhost-user-blk-pci,chardev=c0,num-queues=$queues$props" \
    -kernel "$kernel" -initrd "$initrd" \
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

# e2e_boot_guest SOCKET QUEUES APPEND SERIAL_LOG TIMEOUT_S [follow]
# The guest of scripts/prepare-guest.sh (Debian's kernel) on $E2E_QEMU.
e2e_boot_guest() {
  local fw=""
  [[ -n ${ICEBLK_QEMU:-} ]] && fw=fw
  e2e_run_qemu "$E2E_QEMU" "$fw" "$E2E_GUEST_DIR/vmlinuz" "${E2E_INITRD:-$E2E_GUEST_DIR/initrd.gz}" "" "$@"
}

# e2e_guest_verdict QEMU_RC TIMEOUT_S SERIAL_LOG: after a guest run, stops the device
# and reads the guest's ICEBLK-E2E verdict (into SERIAL_LOG.txt, without the \r of
# the serial lines). Reports each problem through the caller's fail().
e2e_guest_verdict() {
  local rc=$1 limit=$2 serial=$3
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    fail "guest did not power off within ${limit}s"
  elif [[ $rc -ne 0 ]]; then
    fail "qemu exited with status $rc"
  fi
  e2e_stop_device || fail "device did not stop cleanly on SIGTERM"
  tr -d '\r' <"$serial" >"$serial.txt"
  if grep -q '^ICEBLK-E2E: FAIL' "$serial.txt"; then
    fail "guest: $(grep -m1 '^ICEBLK-E2E: FAIL' "$serial.txt" | cut -d' ' -f3-)"
  elif ! grep -qx 'ICEBLK-E2E: PASS' "$serial.txt"; then
    fail "no ICEBLK-E2E marker on the serial console"
  fi
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

# --- the inline-encryption guest (tests/e2e/run_fscrypt_e2e.sh, demo-fscrypt.sh) ---
E2E_QEMU_ICE=${ICEBLK_QEMU_DIR:-$E2E_ROOT/build/qemu-ice}/qemu-system-x86_64  # scripts/build-qemu.sh
E2E_GUEST_ICE_DIR=${ICEBLK_GUEST_ICE_DIR:-$E2E_ROOT/build/guest-ice}

# True when scripts/build-qemu.sh and scripts/prepare-guest.sh --ice have run.
e2e_ice_ready() {
  [[ -x $E2E_QEMU_ICE && -f $E2E_GUEST_ICE_DIR/vmlinuz && -f $E2E_GUEST_ICE_DIR/initrd.gz &&
     -x $E2E_GUEST_ICE_DIR/fscrypt-tool ]]
}

# e2e_initrd_segment BASE OUT FILE...: BASE (an initramfs) plus a segment holding
# each FILE as /iceblk/run/<name> (the kernel unpacks concatenated archives): how
# the fscrypt master key reaches the guest without being on a command line or in a log.
e2e_initrd_segment() {
  local base=$1 out=$2 d
  shift 2
  d=$(mktemp -d "${TMPDIR:-/tmp}/iceblk-seg.XXXXXX")
  mkdir -p "$d/iceblk/run"
  cp "$@" "$d/iceblk/run/"
  (cd "$d" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip >"$out.seg"
  rm -rf "$d"
  cat "$base" "$out.seg" >"$out"
  rm -f "$out.seg"
}

# e2e_ice_initrd KEYFILE OUT: the inline-encryption initramfs with the master key
# (a file named master-key.hex).
e2e_ice_initrd() {
  e2e_initrd_segment "$E2E_GUEST_ICE_DIR/initrd.gz" "$2" "$1"
}

# e2e_boot_guest_ice SOCKET QUEUES DEVICE_PROPS INITRD APPEND SERIAL_LOG TIMEOUT_S [follow]
# Like e2e_boot_guest, with the patched QEMU and the inline-encryption kernel.
e2e_boot_guest_ice() {
  local sock=$1 queues=$2 props=$3 initrd=$4
  shift 4
  e2e_run_qemu "$E2E_QEMU_ICE" fw "$E2E_GUEST_ICE_DIR/vmlinuz" "$initrd" "$props" "$sock" "$queues" "$@"
}

# e2e_ice_counters DEVICE_LOG: "E D P V" from the line iceblkd prints when the
# export closes ("ICE counters: requests encrypted E, decrypted D; keys programmed
# P, evicted V"); nothing if there is no such line.
e2e_ice_counters() {
  sed -n 's/.*ICE counters: requests encrypted \([0-9]*\), decrypted \([0-9]*\); keys programmed \([0-9]*\), evicted \([0-9]*\).*/\1 \2 \3 \4/p' "$1" | tail -n 1
}

# e2e_check_disk DISK SIZE SEED PATTERN_MD5 SERIAL_TXT: the host's own checks of a
# disk the guest's disk test wrote (guest/disk-test.sh), read without the device:
# the pattern md5 the guest reported, the size, the ext4 superblock magic at byte
# 1080, the pattern in the second half, `e2fsck -fn`, and files read through
# debugfs. Each problem goes to the caller's fail(); needs $pattern (iceblk-pattern).
e2e_check_disk() {
  local disk=$1 size=$2 seed=$3 md5=$4 serial_txt=$5 got out want half
  got=$(awk '$1 == "ICEBLK-E2E:" && $2 == "PATTERN-MD5" { print $3 }' "$serial_txt")
  [[ $got == "$md5" ]] || fail "guest read pattern md5 '$got', host computes $md5"
  got=$(stat -c %s "$disk")
  [[ $got -eq $size ]] || fail "disk: $got bytes, expected $size"
  got=$(od -An -tx2 -j 1080 -N 2 "$disk" | tr -d ' ')
  [[ $got == ef53 ]] || fail "disk: no ext4 superblock magic at byte 1080 (found '$got')"
  half=$((size / 2))
  if ! out=$("$pattern" verify "$seed" "$half" "$half" "$disk" 2>&1); then
    fail "disk: pattern in the second half: $out"
  fi
  if ! out=$(e2fsck -fn "$disk" 2>&1); then
    fail "disk: e2fsck -fn found problems:"$'\n'"$out"
  fi
  want=$("$pattern" gen $((seed + 1)) 0 4M | sha256sum | cut -d' ' -f1)
  got=$(debugfs -R 'cat /dir/data.bin' "$disk" 2>/dev/null | sha256sum | cut -d' ' -f1)
  [[ $got == "$want" ]] || fail "disk: /dir/data.bin sha256 $got, expected $want"
  got=$(debugfs -R 'cat /hello.txt' "$disk" 2>/dev/null)
  [[ $got == "hello from the iceblk e2e guest, seed $seed" ]] || fail "disk: /hello.txt is '$got'"
  got=$(debugfs -R 'cat /dir/f17' "$disk" 2>/dev/null)
  [[ $got == "file 17 of seed $seed" ]] || fail "disk: /dir/f17 is '$got'"
}
