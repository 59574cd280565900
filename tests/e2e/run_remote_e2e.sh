#!/usr/bin/env bash
# End-to-end test on a remote image (issue 18): a real Linux guest (QEMU, TCG) makes
# ext4 on an iceblkd disk whose image is an NBD export (qemu-nbd on a unix socket)
# or a Ceph RBD image (a one-node cluster of its own, scripts/ceph-dev-cluster.sh).
#   run_remote_e2e.sh --backend nbd|rbd --iceblkd PATH [--queues N] [--verbose]
# iceblkd runs with its ICE offered and its seccomp sandbox on (the defaults). The
# guest is Debian's stock kernel, which does not negotiate the ICE, so its disk test
# (tests/e2e/guest/disk-test.sh: a pattern over the whole disk, one direct-I/O writer
# per queue, ext4 over the first half, its files checked after a remount) is plain
# virtio-blk I/O through the remote backend. After the guest powers off and iceblkd
# stopped cleanly on SIGTERM (a seccomp kill would be status 159), the host reads the
# storage itself, bypassing iceblkd: the file behind qemu-nbd, or `rbd export` of the
# image, and checks the pattern in the second half, the ext4 superblock magic at
# byte 1080, e2fsck -fn and the files' contents through debugfs.
# Exit status: 0 pass, 1 fail, 77 skipped (guest not prepared, or a package of
# scripts/install-deps.sh --remote missing).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

backend="" iceblkd="" queues=1 verbose=""
size=$((64 << 20))
timeout_s=${ICEBLK_E2E_TIMEOUT:-300}
while (($#)); do
  case "$1" in
    --backend) backend=$2; shift 2 ;;
    --iceblkd) iceblkd=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --verbose) verbose=follow; shift ;;
    *) echo "usage: $0 --backend nbd|rbd --iceblkd PATH [--queues N] [--verbose]" >&2; exit 2 ;;
  esac
done
[[ $backend == nbd || $backend == rbd ]] || { echo "$0: --backend nbd|rbd" >&2; exit 2; }
[[ $queues =~ ^[1-8]$ ]] || { echo "$0: --queues 1..8" >&2; exit 2; }
[[ -x $iceblkd ]] || { echo "$0: --iceblkd PATH (the built iceblkd)" >&2; exit 2; }
if ! e2e_guest_ready; then
  echo "SKIP: no guest in $E2E_GUEST_DIR; run scripts/prepare-guest.sh" >&2
  exit 77
fi
case $backend in
  nbd) remote_tools=(qemu-nbd) ;;
  rbd) remote_tools=(ceph-mon ceph-osd rados rbd) ;;
esac
for t in "${remote_tools[@]}"; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed (scripts/install-deps.sh --remote)" >&2; exit 77; }
done
e2e_need_tools qemu-system-x86_64 e2fsck debugfs timeout

e2e_begin iceblk-remote-e2e
cluster=$E2E_ROOT/scripts/ceph-dev-cluster.sh
export CEPH_DEV_DIR=$tmp/ceph
conf=$CEPH_DEV_DIR/ceph.conf
nbd_pid="" cluster_up=""
# On every way out (e2e_begin's trap runs this hook before e2e_cleanup): the guest
# and iceblkd stop first (e2e_cleanup is idempotent), then the storage under them.
e2e_before_cleanup() {
  e2e_cleanup
  if [[ -n $nbd_pid ]]; then
    kill "$nbd_pid" 2>/dev/null || true
    wait "$nbd_pid" 2>/dev/null || true
    nbd_pid=""
  fi
  if [[ -n $cluster_up ]]; then
    "$cluster" stop >/dev/null 2>&1 || true
    cluster_up=""
  fi
}

pattern=$E2E_GUEST_DIR/iceblk-pattern
seed=$((1000000 + RANDOM * 32768 + RANDOM))  # fresh per run: no stale data can pass
name="e2e[$backend, ICE offered, $queues queue(s)]"
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

# --- the storage ----------------------------------------------------------------
case $backend in
  nbd)
    # The file behind the export is $img; --shared: one NBD connection per queue.
    truncate -s "$size" "$img"
    qemu-nbd -f raw -x disk -k "$tmp/nbd.sock" --persistent --shared=$((queues + 2)) --discard=unmap "$img" 2>"$tmp/qemu-nbd.log" &
    nbd_pid=$!
    for _ in $(seq 200); do [[ -S $tmp/nbd.sock ]] && break; sleep 0.05; done
    [[ -S $tmp/nbd.sock ]] || { cat "$tmp/qemu-nbd.log" >&2; echo "FAIL $name: qemu-nbd did not start"; exit 1; }
    image="nbd+unix:///disk?socket=$tmp/nbd.sock"
    size_args=()
    ;;
  rbd)
    cluster_up=1
    "$cluster" start >"$tmp/cluster.log" 2>&1 || { cat "$tmp/cluster.log" >&2; echo "FAIL $name: ceph-dev-cluster.sh start"; exit 1; }
    image="rbd:rbd/guest:conf=$conf"
    size_args=(--size "$size")  # iceblkd creates the image
    ;;
esac

pattern_md5=$("$pattern" gen "$seed" 0 "$size" | md5sum | cut -d' ' -f1)
if ! e2e_start_device iceblkd "$sock" "$image" "$queues" "$devlog" "$iceblkd" "${size_args[@]}"; then
  if grep -q "built without" "$devlog"; then echo "SKIP: $(cat "$devlog")" >&2; exit 77; fi
  echo "FAIL $name: iceblkd did not start"
  exit 1
fi

rc=0
e2e_boot_guest "$sock" "$queues" "iceblk.test=disk iceblk.seed=$seed iceblk.size=$size iceblk.queues=$queues iceblk.md5=$pattern_md5" \
  "$serial" "$timeout_s" "$verbose" || rc=$?
boot_s=$((SECONDS - start))
# The guest's I/O ran under iceblkd's seccomp filter (mode 2), which is still alive.
if [[ -n $E2E_DEVICE_PID ]] && kill -0 "$E2E_DEVICE_PID" 2>/dev/null; then
  got=$(awk '$1 == "Seccomp:" { print $2 }' "/proc/$E2E_DEVICE_PID/status")
  [[ $got == 2 ]] || fail "iceblkd does not run under its seccomp filter (Seccomp: '$got')"
else
  fail "iceblkd is gone after the guest run (a seccomp kill is SIGSYS, status 159)"
fi
# --- the guest's verdict (stops iceblkd: it must exit 0 on SIGTERM) -------------
e2e_guest_verdict "$rc" "$timeout_s" "$serial"
if grep -qi "seccomp\|SIGSYS" "$devlog"; then
  fail "iceblkd's log mentions the sandbox: $(grep -mi1 'seccomp\|SIGSYS' "$devlog")"
fi

# --- the host reads the storage itself -------------------------------------------
if [[ $failed -eq 0 ]]; then
  case $backend in
    nbd)
      kill "$nbd_pid" && wait "$nbd_pid" 2>/dev/null || true
      nbd_pid=""
      disk=$img
      ;;
    rbd)
      disk=$tmp/export.img
      rbd -c "$conf" export rbd/guest "$disk" >"$tmp/export.log" 2>&1 ||
        { cat "$tmp/export.log"; fail "rbd export rbd/guest"; }
      ;;
  esac
fi
if [[ $failed -eq 0 ]]; then
  e2e_check_disk "$disk" "$size" "$seed" "$pattern_md5" "$serial.txt"
fi

if [[ $failed -ne 0 ]]; then
  show_logs
  echo "RESULT $name: FAIL (${boot_s}s)"
  exit 1
fi
grep '^ICEBLK-E2E: step' "$serial.txt" | sed 's/^ICEBLK-E2E: step /  guest: /'
echo "  host ($backend storage read directly): ext4 magic, pattern md5, second-half pattern, e2fsck -fn, debugfs file contents OK"
echo "RESULT $name: PASS (guest ${boot_s}s, total $((SECONDS - start))s)"
