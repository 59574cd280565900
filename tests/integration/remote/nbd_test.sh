#!/usr/bin/env bash
# iceblkd on an NBD export (libnbd) served by qemu-nbd on a unix socket:
#   1. unreachable at start-up: one line naming the image, exit 1, no socket bound;
#   2. the conformance suite, plain and ICE;
#   3. with ICE the file behind qemu-nbd holds only AES-256-XTS of the plaintext;
#   4. server stopped and restarted (default retry): a write blocks, then completes
#      once the server is back; another export of the same daemon keeps serving;
#      a front-end stuck on the dead server disconnects cleanly;
#   5. --on-storage-error fail --io-timeout 2: the write fails with IOERR after the
#      timeout, and the export recovers when the server is back.
#   tests/integration/remote/nbd_test.sh ICEBLKD ICEBLK   (ctest: remote_nbd)
set -euo pipefail
ICEBLKD=$1 ICEBLK=$2
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

if ! command -v qemu-nbd >/dev/null; then
  echo "remote_nbd: skipped: qemu-nbd not installed (scripts/install-deps.sh --remote)"; exit 77
fi
if ! python3 -c "import cryptography" 2>/dev/null; then
  echo "remote_nbd: skipped: python3-cryptography not installed (scripts/install-deps.sh --remote)"; exit 77
fi
T=$(mktemp -d /tmp/iceblk-nbd.XXXXXX)
nbd_pid=""
cleanup() {
  [[ -n ${daemon_pid:-} ]] && kill -9 "$daemon_pid" 2>/dev/null || true
  [[ -n $nbd_pid ]] && kill "$nbd_pid" 2>/dev/null || true
  [[ -n ${writer:-} ]] && kill -9 "$writer" 2>/dev/null || true
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$T"
}
trap cleanup EXIT

truncate -s 64M "$T/disk.raw"
uri="nbd+unix:///disk?socket=$T/nbd.sock"
start_nbd() {
  rm -f "$T/nbd.sock"
  qemu-nbd -f raw -x disk -k "$T/nbd.sock" --persistent --shared=8 --discard=unmap "$T/disk.raw" \
    2>>"$T/qemu-nbd.log" &
  nbd_pid=$!
  wait_sock "$T/nbd.sock" || fail "qemu-nbd did not start"
}
stop_nbd() { kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=""; }
read_raw() { dd if="$T/disk.raw" of="$3" bs=4096 skip=$(($1 / 4096)) count=$(($2 / 4096)) status=none; }

# 1. Unreachable at start-up.
rc=0
"$ICEBLKD" --socket "$T/vm.sock" --image "$uri" >"$T/unreach.out" 2>"$T/unreach.err" || rc=$?
if grep -q "built without NBD" "$T/unreach.err"; then
  echo "remote_nbd: skipped: $(cat "$T/unreach.err")"; exit 77
fi
[[ $rc -eq 1 ]] || fail "unreachable server: exit $rc, expected 1"
[[ $(wc -l <"$T/unreach.err") -eq 1 ]] || { cat "$T/unreach.err"; fail "unreachable server: not one line"; }
grep -q "$uri" "$T/unreach.err" || fail "unreachable server: the line does not name the image"
[[ -e $T/vm.sock ]] && fail "unreachable server: the vhost-user socket was bound anyway"
echo "ok: unreachable at start-up: $(cat "$T/unreach.err")"

start_nbd
# 2. Conformance, plain and ICE.
start_daemon plain "$T/plain.sock" --socket "$T/plain.sock" --image "$uri" --no-ice
conformance nbd-plain "$T/plain.sock"
stop_daemon plain
start_daemon ice "$T/ice.sock" --socket "$T/ice.sock" --image "$uri"
conformance nbd-ice "$T/ice.sock"
# 3. Only ciphertext on the medium.
ciphertext nbd-ice "$T/ice.sock" $((1 << 20))
stop_daemon ice

# 4. Retry (default): two exports, the NBD one and a file one.
cat >"$T/two.json" <<EOF
{ "engine": {"num_slots": 64},
  "exports": [
    {"name": "remote", "socket": "$T/remote.sock", "image": "$uri", "max_slots": 8, "io_timeout": 3},
    {"name": "local", "socket": "$T/local.sock", "image": "$T/local.img", "size": "16M",
     "slot_offset": 8, "max_slots": 8}
  ] }
EOF
start_daemon two "$T/local.sock" --config "$T/two.json"
wait_sock "$T/remote.sock" || fail "remote export socket missing"
stop_nbd
"$ICEBLK" write -s "$T/remote.sock" --offset 0 --length 1M --pattern seed:3 >"$T/w1.log" 2>&1 &
writer=$!
sleep 2
kill -0 "$writer" 2>/dev/null || { cat "$T/w1.log"; fail "retry: the write finished while the server was down"; }
"$ICEBLK" write -s "$T/local.sock" --offset 0 --length 1M --pattern seed:4 >/dev/null ||
  fail "retry: the other export stopped serving while the NBD server was down"
"$ICEBLK" read -s "$T/local.sock" --offset 0 --length 1M --pattern seed:4 >/dev/null || fail "retry: local read"
start_nbd
wait "$writer" || { cat "$T/w1.log"; fail "retry: the write failed after the server came back"; }
writer=""
"$ICEBLK" read -s "$T/remote.sock" --offset 0 --length 1M --pattern seed:3 >/dev/null ||
  fail "retry: data written across the outage does not read back"
echo "ok: retry: a write blocked while qemu-nbd was down, then completed; the other export kept serving"

# A front-end stuck on a dead server disconnects cleanly: the queue stops after
# io_timeout (3 s), and the export serves the next front-end.
stop_nbd
"$ICEBLK" write -s "$T/remote.sock" --offset 2M --length 64K --pattern seed:5 >/dev/null 2>&1 &
writer=$!
sleep 1
kill -9 "$writer"
wait "$writer" 2>/dev/null || true
writer=""
for _ in $(seq 100); do grep -q "storage not answering; failing" "$T/two.log" && break; sleep 0.1; done
start_nbd
ok=0
for _ in $(seq 40); do
  if timeout 20 "$ICEBLK" read -s "$T/remote.sock" --offset 0 --length 1M --pattern seed:3 >/dev/null 2>&1; then
    ok=1; break
  fi
  sleep 0.5
done
[[ $ok -eq 1 ]] || { cat "$T/two.log"; fail "retry: the export did not serve a new front-end after a stuck one left"; }
grep -q "storage not answering; failing" "$T/two.log" || fail "retry: the stop path did not report the stuck requests"
echo "ok: retry: a front-end stuck on the dead server disconnected; the export then served the next one"
stop_daemon two

# 5. Fail after --io-timeout, then recover.
start_daemon failmode "$T/f.sock" --socket "$T/f.sock" --image "$uri" --on-storage-error fail --io-timeout 2
stop_nbd
start=$(date +%s)
rc=0
timeout 30 "$ICEBLK" write -s "$T/f.sock" --offset 0 --length 64K --pattern seed:6 >"$T/w2.log" 2>&1 || rc=$?
elapsed=$(($(date +%s) - start))
[[ $rc -ne 0 && $rc -ne 124 ]] || { cat "$T/w2.log"; fail "fail mode: the write did not fail (rc $rc)"; }
grep -qi "ioerr\|i/o error\|status 1" "$T/w2.log" || { cat "$T/w2.log"; fail "fail mode: no IOERR reported"; }
((elapsed >= 2 && elapsed <= 10)) || fail "fail mode: failed after ${elapsed}s, expected about 2"
start_nbd
write_recovers "$T/f.sock" 20 || fail "fail mode: the export did not recover when the server came back"
"$ICEBLK" read -s "$T/f.sock" --offset 0 --length 64K --pattern seed:6 >/dev/null || fail "fail mode: read back"
echo "ok: fail: IOERR after ${elapsed}s with qemu-nbd down; recovered when it came back"
stop_daemon failmode
echo "remote_nbd: all passed"
