#!/usr/bin/env bash
# iceblkd on Ceph RBD images (librbd), on a one-node cluster of its own
# (scripts/ceph-dev-cluster.sh, state in a temp dir, removed afterwards):
#   1. unreachable at start-up (no monitor): one line naming the image, exit 1;
#   2. --size creates the image; the conformance suite, plain and ICE;
#   3. with ICE the image's RADOS objects (rados get rbd_data.ID.N) hold only
#      AES-256-XTS of the plaintext;
#   4. OSD stopped and restarted (default retry): a write blocks, then completes;
#      a file export of the same daemon keeps serving; a front-end stuck on the
#      dead OSD disconnects cleanly and the export serves the next one;
#   5. --on-storage-error fail --io-timeout 3: IOERR after the timeout on the
#      queue's own timer (librados' own op timeout is 4x that), recovery when the
#      OSD is back, and the late librbd completion dropped safely;
#   6. the whole cluster killed (mon and OSD) under a live export: remove-export
#      (QMP) and SIGTERM each finish within a bounded time, and a file export of
#      the same daemon keeps serving.
#   7. (with RBD_ZERO_ALLOC) the RBD data path allocates nothing of iceblk's own
#      in steady state (rbd_zero_alloc.cc).
#   tests/integration/remote/rbd_test.sh ICEBLKD ICEBLK [RBD_ZERO_ALLOC]   (ctest: remote_rbd)
set -euo pipefail
ICEBLKD=$1 ICEBLK=$2 ZERO_ALLOC=${3:-}
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
cluster=$(cd "$here_remote/../../.." && pwd)/scripts/ceph-dev-cluster.sh

for b in ceph-mon ceph-osd rados rbd; do
  if ! command -v $b >/dev/null; then
    echo "remote_rbd: skipped: $b not installed (scripts/install-deps.sh --remote)"; exit 77
  fi
done
if ! python3 -c "import cryptography" 2>/dev/null; then
  echo "remote_rbd: skipped: python3-cryptography not installed (scripts/install-deps.sh --remote)"; exit 77
fi
T=$(mktemp -d /tmp/iceblk-rbd.XXXXXX)
export CEPH_DEV_DIR=$T/ceph
conf=$CEPH_DEV_DIR/ceph.conf
cleanup() {
  [[ -n ${daemon_pid:-} ]] && kill -9 "$daemon_pid" 2>/dev/null || true
  [[ -n ${writer:-} ]] && kill -9 "$writer" 2>/dev/null || true
  "$cluster" stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$T"
}
trap cleanup EXIT

# 1. Unreachable: a conf naming a port where no monitor listens (the cluster is
# not even started yet).
mkdir -p "$T/nomon"
printf '[global]\nmon_host = v1:127.0.0.1:1\nauth_client_required = none\n' >"$T/nomon/ceph.conf"
img="rbd:rbd/none:conf=$T/nomon/ceph.conf"
rc=0
"$ICEBLKD" --socket "$T/vm.sock" --image "$img" >"$T/unreach.out" 2>"$T/unreach.err" || rc=$?
if grep -q "built without RBD" "$T/unreach.err"; then
  echo "remote_rbd: skipped: $(cat "$T/unreach.err")"; exit 77
fi
[[ $rc -eq 1 ]] || { cat "$T/unreach.err"; fail "unreachable cluster: exit $rc, expected 1"; }
[[ $(wc -l <"$T/unreach.err") -eq 1 ]] || { cat "$T/unreach.err"; fail "unreachable cluster: not one line"; }
grep -qF "$img" "$T/unreach.err" || fail "unreachable cluster: the line does not name the image"
[[ -e $T/vm.sock ]] && fail "unreachable cluster: the vhost-user socket was bound anyway"
echo "ok: unreachable at start-up: $(cat "$T/unreach.err")"

"$cluster" start || fail "ceph-dev-cluster.sh start"

if [[ -n $ZERO_ALLOC ]]; then
  rc=0
  "$ZERO_ALLOC" "$conf" >"$T/zero-alloc.log" 2>&1 || rc=$?
  [[ $rc -eq 0 || $rc -eq 77 ]] || { cat "$T/zero-alloc.log"; fail "rbd_zero_alloc (rc $rc)"; }
  echo "ok: $(grep rbd_zero_alloc: "$T/zero-alloc.log")"
fi

# 2. --size creates; conformance plain and ICE.
start_daemon plain "$T/plain.sock" --socket "$T/plain.sock" --image "rbd:rbd/plain:conf=$conf" --size 64M --no-ice
rbd -c "$conf" info rbd/plain >/dev/null || fail "--size did not create rbd/plain"
conformance rbd-plain "$T/plain.sock"
stop_daemon plain
start_daemon ice "$T/ice.sock" --socket "$T/ice.sock" --image "rbd:rbd/ice:conf=$conf" --size 64M
conformance rbd-ice "$T/ice.sock"

# 3. Only ciphertext in the RADOS objects (4 MiB objects: offset 1 MiB is in
# object 0).
prefix=$(rbd -c "$conf" info rbd/ice | sed -n 's/.*block_name_prefix: //p')
[[ $prefix == rbd_data.* ]] || fail "no block_name_prefix for rbd/ice"
read_raw() {
  local obj=$(($1 / (4 << 20)))
  rados -c "$conf" -p rbd get "$(printf '%s.%016x' "$prefix" $obj)" "$T/object.bin" || fail "rados get"
  dd if="$T/object.bin" of="$3" bs=4096 skip=$((($1 % (4 << 20)) / 4096)) count=$(($2 / 4096)) status=none
}
ciphertext rbd-ice "$T/ice.sock" $((1 << 20))
stop_daemon ice

# 4. Retry (default) with the OSD down; a file export alongside.
cat >"$T/two.json" <<EOF
{ "exports": [
    {"name": "remote", "socket": "$T/remote.sock", "image": "rbd:rbd/two:conf=$conf", "size": "64M",
     "max_slots": 8, "io_timeout": 3},
    {"name": "local", "socket": "$T/local.sock", "image": "$T/local.img", "size": "16M",
     "slot_offset": 8, "max_slots": 8}
  ] }
EOF
start_daemon two "$T/local.sock" --config "$T/two.json"
wait_sock "$T/remote.sock" || fail "remote export socket missing"
"$cluster" stop-osd
"$ICEBLK" write -s "$T/remote.sock" --offset 0 --length 1M --pattern seed:3 >"$T/w1.log" 2>&1 &
writer=$!
sleep 3
kill -0 "$writer" 2>/dev/null || { cat "$T/w1.log"; fail "retry: the write finished while the OSD was down"; }
"$ICEBLK" write -s "$T/local.sock" --offset 0 --length 1M --pattern seed:4 >/dev/null ||
  fail "retry: the other export stopped serving while the OSD was down"
"$cluster" start-osd
wait "$writer" || { cat "$T/w1.log"; fail "retry: the write failed after the OSD came back"; }
writer=""
"$ICEBLK" read -s "$T/remote.sock" --offset 0 --length 1M --pattern seed:3 >/dev/null ||
  fail "retry: data written across the outage does not read back"
echo "ok: retry: a write blocked while the OSD was down, then completed; the other export kept serving"

"$cluster" stop-osd
"$ICEBLK" write -s "$T/remote.sock" --offset 8M --length 64K --pattern seed:5 >/dev/null 2>&1 &
writer=$!
sleep 1
kill -9 "$writer"
wait "$writer" 2>/dev/null || true
writer=""
for _ in $(seq 100); do grep -q "storage not answering; failing" "$T/two.log" && break; sleep 0.1; done
grep -q "storage not answering; failing" "$T/two.log" || fail "retry: the stop path did not give up on the dead OSD"
"$ICEBLK" write -s "$T/local.sock" --offset 0 --length 64K --pattern seed:4 >/dev/null ||
  fail "retry: the other export stopped serving"
"$cluster" start-osd
timeout 60 "$ICEBLK" read -s "$T/remote.sock" --offset 0 --length 1M --pattern seed:3 >/dev/null ||
  fail "retry: the export did not serve a new front-end after a stuck one left"
echo "ok: retry: a front-end stuck on the dead OSD disconnected; the export then served the next one"
stop_daemon two

# 5. Fail after --io-timeout, then recover.
start_daemon failmode "$T/f.sock" --socket "$T/f.sock" --image "rbd:rbd/two:conf=$conf" --on-storage-error fail \
  --io-timeout 3
"$cluster" stop-osd
start=$(date +%s)
rc=0
timeout 60 "$ICEBLK" write -s "$T/f.sock" --offset 0 --length 64K --pattern seed:6 >"$T/w2.log" 2>&1 || rc=$?
elapsed=$(($(date +%s) - start))
[[ $rc -ne 0 && $rc -ne 124 ]] || { cat "$T/w2.log"; fail "fail mode: the write did not fail (rc $rc)"; }
grep -q "IOERR" "$T/w2.log" || { cat "$T/w2.log"; fail "fail mode: no IOERR reported"; }
((elapsed >= 3 && elapsed <= 8)) || fail "fail mode: failed after ${elapsed}s, expected about 3 (not librados' 12)"
grep -q "failed after --io-timeout" "$T/failmode.log" || fail "fail mode: not failed by the queue's own deadline"
"$cluster" start-osd
write_recovers "$T/f.sock" 60 || fail "fail mode: the export did not recover when the OSD came back"
"$ICEBLK" read -s "$T/f.sock" --offset 0 --length 64K --pattern seed:6 >/dev/null || fail "fail mode: read back"
echo "ok: fail: IOERR after ${elapsed}s with the OSD down; recovered when it came back"
# The write that timed out was resent by librbd when the OSD came back; its late
# completion went to a slot of the queue's own and was dropped: the daemon is
# still up and serving.
kill -0 "$daemon_pid" || fail "fail mode: the daemon died after a late completion"
"$ICEBLK" read -s "$T/f.sock" --offset 0 --length 64K --pattern seed:6 >/dev/null || fail "fail mode: read after the late completion"
stop_daemon failmode

# 6. The cluster dies under a live export: removing it and stopping the daemon
# still finish (rbd_close releases the image's lock: it would wait for the
# cluster forever).
# stop_bounded NAME LIMIT: SIGTERM the daemon; exit 0 within LIMIT seconds.
stop_bounded() {
  local start rc=0
  start=$(date +%s)
  kill -TERM "$daemon_pid"
  timeout 60 tail --pid="$daemon_pid" -f /dev/null || fail "$1: SIGTERM: still running after 60 s"
  wait "$daemon_pid" || rc=$?
  daemon_pid=""
  elapsed=$(($(date +%s) - start))
  [[ $rc -eq 0 ]] || { tail -5 "$T/$1.log"; fail "$1: SIGTERM: exit status $rc"; }
  ((elapsed <= $2)) || fail "$1: SIGTERM took ${elapsed}s"
}
kill_cluster() { for d in osd.0 mon.a; do kill -9 "$(cat "$CEPH_DEV_DIR/run/$d.pid")"; done; }
cat >"$T/dead.json" <<EOF
{ "control": "$T/ctl.sock",
  "exports": [
    {"name": "remote", "socket": "$T/remote.sock", "image": "rbd:rbd/two:conf=$conf", "io_timeout": 3,
     "max_slots": 8},
    {"name": "local", "socket": "$T/local.sock", "image": "$T/local.img", "size": "16M",
     "slot_offset": 8, "max_slots": 8}
  ] }
EOF
start_daemon dead "$T/local.sock" --config "$T/dead.json"
wait_sock "$T/remote.sock" || fail "dead cluster: remote export socket missing"
"$ICEBLK" write -s "$T/remote.sock" --offset 0 --length 64K --pattern seed:7 >/dev/null || fail "dead cluster: first write"
kill_cluster
start=$(date +%s)
timeout 60 "$ICEBLK" ctl -c "$T/ctl.sock" remove-export name=remote >"$T/rm.log" 2>&1 ||
  { cat "$T/rm.log"; fail "dead cluster: remove-export failed or hung (60 s)"; }
elapsed=$(($(date +%s) - start))
((elapsed <= 15)) || fail "dead cluster: remove-export took ${elapsed}s"
grep -q "abandoned" "$T/dead.log" || fail "dead cluster: the abandoned close was not logged"
"$ICEBLK" write -s "$T/local.sock" --offset 0 --length 64K --pattern seed:8 >/dev/null &&
  "$ICEBLK" read -s "$T/local.sock" --offset 0 --length 64K --pattern seed:8 >/dev/null ||
  fail "dead cluster: the file export stopped serving"
echo "ok: dead cluster: remove-export finished in ${elapsed}s; the file export kept serving"
stop_bounded dead 15
echo "ok: dead cluster: SIGTERM after the abandoned close: exit 0 in ${elapsed}s"
# And the daemon's shutdown with the RBD export still live.
"$cluster" stop >/dev/null 2>&1 || true
"$cluster" start >/dev/null || fail "ceph-dev-cluster.sh start (again)"
start_daemon dead2 "$T/remote.sock" --socket "$T/remote.sock" --image "rbd:rbd/three:conf=$conf" --size 16M \
  --io-timeout 3
"$ICEBLK" write -s "$T/remote.sock" --offset 0 --length 64K --pattern seed:9 >/dev/null || fail "dead cluster: write (2)"
kill_cluster
stop_bounded dead2 15
grep -q "abandoned" "$T/dead2.log" || fail "dead cluster: SIGTERM: the abandoned close was not logged"
echo "ok: dead cluster: SIGTERM with a live RBD export: exit 0 in ${elapsed}s"
echo "remote_rbd: all passed"
