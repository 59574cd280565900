#!/usr/bin/env bash
# The main job: iceblkd serves an embedded default disk image (64 MiB, under
# build/demo/run/) to a real Linux guest (QEMU under TCG, vhost-user-blk), which
# shows the disk, makes a fresh ext4 on it, writes files, re-reads them after a
# remount; then the host stops the device and checks the image on its own.
# Installs what it needs (apt packages, the guest kernel) and is safe to re-run.
# Then (part 3, scripts/demo-fscrypt.sh) a guest with the patched QEMU and Linux of
# patches/ runs fscrypt with inlinecrypt on iceblkd's inline crypto engine; both are
# built on first use (about 3 minutes each, with progress).
#   scripts/demo.sh [--quick]   --quick: parts 1 and 2 only (stock QEMU and kernel)
#   ICEBLK_DEMO_QUEUES=N   virtqueues (and guest CPUs), default 2
#   ICEBLK_DEMO_HOLD=S     pause S seconds in part 2 with the ICE daemon up (for
#                          tests/e2e/demo_test.sh, which interrupts the demo there)
# Every process it starts is stopped when it ends, however it ends (Ctrl-C included).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument '$arg' (use --quick, --help)" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh --e2e
scripts/prepare-guest.sh
build=${ICEBLK_BUILD_DIR:-build/demo}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DICEBLK_BUILD_TESTS=OFF -DICEBLK_BUILD_BENCH=OFF >/dev/null
ninja -C "$build"

# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh
queues=${ICEBLK_DEMO_QUEUES:-2}
run=$PWD/$build/run   # absolute: the socket paths are matched against live listeners
mkdir -p "$run"
img=$run/disk.img
sock=$run/iceblkd.sock
serial=$run/serial.log
devlog=$run/device.log
ice_img=$run/ice.img ice_sock=$run/ice.sock key=$run/demo.key
iceblkd=$build/tools/iceblkd/iceblkd
iceblk=$build/tools/iceblk/iceblk
for exe in "$iceblkd" "$iceblk"; do
  [[ -x $exe ]] || { echo "demo: $exe was not built" >&2; exit 1; }
done
kind=iceblkd

# Every process this script starts is stopped on every way out: the normal end, a
# failed step, a set -e abort, Ctrl-C and SIGTERM. The key file goes with them.
# Part 3 runs in a process group of its own, so that one signal reaches every process
# it started (its scripts, the guest, the device) at once.
part3_pid=""
demo_cleanup() {
  if [[ -n $part3_pid ]]; then
    kill -TERM -- "-$part3_pid" 2>/dev/null || true
    e2e_reap "$part3_pid"
    pkill -KILL -g "$part3_pid" 2>/dev/null || true
    part3_pid=""
  fi
  e2e_cleanup
  rm -f "$key"
}
trap demo_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

demo_hold() {
  [[ -n ${ICEBLK_DEMO_HOLD:-} ]] || return 0
  echo "  (ICEBLK_DEMO_HOLD: pausing ${ICEBLK_DEMO_HOLD} s with the engine up)"
  sleep "$ICEBLK_DEMO_HOLD"
}

# A socket left by a daemon that died is removed; one still served by a live process
# stops the demo here, before anything starts, with a line that names the process.
e2e_claim_socket "$sock" && e2e_claim_socket "$ice_sock" || exit 1

# The embedded default image: a fresh, empty 64 MiB raw disk on every run.
rm -f "$img"
truncate -s 64M "$img"

cat <<EOF
==================================================================
 iceblk demo: a Linux guest on a vhost-user-blk disk
   device : iceblkd ($iceblkd)
   image  : $img (64 MiB)
   guest  : Debian kernel $(cat "$E2E_GUEST_DIR"/kernel/*/version 2>/dev/null), $queues vCPU(s) / virtqueue(s), QEMU TCG
==================================================================
EOF
e2e_start_device "$kind" "$sock" "$img" "$queues" "$devlog" "$iceblkd"
echo "device listening on $sock; booting the guest (about 20 s under TCG)..."
echo "------------------------- guest serial console -------------------------"
start=$SECONDS
rc=0
e2e_boot_guest "$sock" "$queues" "iceblk.test=demo" "$serial" 300 follow || rc=$?
echo "------------------------------------------------------------------------"
guest_s=$((SECONDS - start))
stopped=ok
e2e_stop_device || stopped="NOT clean"
echo "device stopped with SIGTERM: $stopped"

tr -d '\r' <"$serial" >"$serial.txt"
result=$(grep -m1 -E '^ICEBLK-(DEMO|E2E): ' "$serial.txt" || true)
sum=""
[[ $result == "ICEBLK-DEMO: OK "* ]] && sum=${result#ICEBLK-DEMO: OK }

echo "host-side look at $img:"
fsck=FAILED
e2fsck -fn "$img" >"$run/e2fsck.log" 2>&1 && fsck=clean
echo "  e2fsck -fn: $fsck"
host_sum=$(debugfs -R 'cat /random.bin' "$img" 2>/dev/null | sha256sum | cut -d' ' -f1)
echo "  /hello.txt: $(debugfs -R 'cat /hello.txt' "$img" 2>/dev/null)"
echo "  /random.bin sha256 read by the host: $host_sum"

ok=1
[[ $rc -eq 0 && -n $sum && $sum == "$host_sum" && $fsck == clean && $stopped == ok ]] || ok=0

# Part 2: the inline crypto engine. A stock QEMU guest never sees VIRTIO_BLK_F_ICE
# (QEMU filters unknown virtio-blk feature bits), so the ICE is driven here by our
# own userspace driver, the `iceblk` CLI, against the same iceblkd binary.
ice_ok=FAILED
rm -f "$ice_img" "$key"
truncate -s 16M "$ice_img"
head -c 64 /dev/urandom >"$key"   # AES-256-XTS key, never printed
chmod 600 "$key"
echo
echo "---------------- the inline crypto engine, driven by iceblk ----------------"
text=$run/secret.txt
for i in $(seq 64); do echo "line $i: this sentence is stored encrypted by the inline crypto engine"; done >"$text"
truncate -s 4096 "$text"   # one data unit
ice_args=(--socket "$ice_sock" --key-file "$key" --algorithm aes-256-xts --data-unit-size 4096)
if e2e_start_device iceblkd "$ice_sock" "$ice_img" 1 "$run/ice-device.log" "$iceblkd" --log-level warn &&
   "$iceblk" info --socket "$ice_sock" | sed 's/^/  /' &&
   echo "\$ iceblk write --offset 1M --key-file demo.key --algorithm aes-256-xts --data-unit-size 4096 --file secret.txt" &&
   demo_hold &&
   "$iceblk" write "${ice_args[@]}" --offset 1M --length 4096 --file "$text" &&
   "$iceblk" read "${ice_args[@]}" --offset 1M --length 4096 --file "$run/decrypted.txt" &&
   cmp -s "$text" "$run/decrypted.txt" && echo "  read back with the key: identical to secret.txt" &&
   echo "  the same bytes on the image file (host view, first 64 bytes at offset 1M):" &&
   od -A d -t x1 -j $((1 << 20)) -N 64 "$ice_img" | sed 's/^/    /' &&
   ! grep -q "inline crypto engine" "$ice_img" && echo "  the plaintext does not appear anywhere in the image" &&
   echo "\$ iceblk verify (seeded pattern, encrypted write + read back + raw-medium check)" &&
   "$iceblk" verify "${ice_args[@]}" --offset 2M --length 1M | sed 's/^/  /' &&
   e2e_stop_device; then
  ice_ok=ok
fi
rm -f "$key"
echo "-----------------------------------------------------------------------------"
[[ $ice_ok == ok ]] || ok=0
# Part 3: fscrypt in a real guest on the ICE (patched QEMU and Linux, docs/guest.md).
fscrypt_ok=skipped
if ((!quick)); then
  fscrypt_ok=FAILED
  echo
  setsid scripts/demo-fscrypt.sh --iceblkd "$iceblkd" &
  part3_pid=$!
  rc3=0
  wait "$part3_pid" || rc3=$?
  part3_pid=""
  if ((rc3 == 0)); then fscrypt_ok=ok; else ok=0; fi
fi
echo "=================================================================="
if ((ok)); then
  echo " demo OK: the guest used the disk served by $kind for ${guest_s}s; the"
  echo " file it wrote is on the image, bit for bit, and the file system is clean."
  echo " ICE: data written through the engine is ciphertext on the image and decrypts back."
  if [[ $fscrypt_ok == ok ]]; then
    echo " fscrypt: the guest's inlinecrypt files were encrypted by iceblkd's engine, and Linux's"
    echo " own software fscrypt reads them back identically (and the other way round)."
  fi
  echo "=================================================================="
  exit 0
fi
echo " demo FAILED (qemu status $rc, guest said: ${result:-nothing}; ICE part: $ice_ok; fscrypt part: $fscrypt_ok)"
echo " logs: $serial, $devlog, $run/ice-device.log, $run/e2fsck.log"
echo "=================================================================="
exit 1
