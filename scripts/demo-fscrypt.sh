#!/usr/bin/env bash
# Demo, part 5 of scripts/demo.sh: a Linux guest's fscrypt uses iceblkd's inline
# crypto engine (mount -o inlinecrypt), with the patched QEMU and guest kernel of
# patches/ (docs/guest.md). Builds both on first use (about 3 minutes each, with
# progress), then boots the guest and shows:
#   - the guest's view: the blk-crypto profile, the fscrypt policies, the
#     "using blk-crypto (native)" lines, software fscrypt reading what the device wrote;
#   - the device's view: iceblkd's ICE counters when the export closes;
#   - the host's view: only ciphertext on the image.
#   scripts/demo-fscrypt.sh [--iceblkd PATH] [--keep DIR] [--max-slots N]
# Without --iceblkd, it builds iceblkd into build/demo (as scripts/demo.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
iceblkd="" keep="" slots=8
while (($#)); do
  case "$1" in
    --iceblkd) iceblkd=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --max-slots) slots=$2; shift 2 ;;
    *) echo "usage: $0 [--iceblkd PATH] [--keep DIR] [--max-slots N]" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh --e2e --guest-ice
if [[ ! -x ${ICEBLK_QEMU_DIR:-build/qemu-ice}/qemu-system-x86_64 || ! -f ${ICEBLK_GUEST_ICE_DIR:-build/guest-ice}/vmlinuz ]]; then
  echo "demo-fscrypt: first use: building the patched QEMU and guest kernel (about 3 minutes each)"
fi
scripts/build-qemu.sh
scripts/prepare-guest.sh --ice
if [[ -z $iceblkd ]]; then
  build=${ICEBLK_BUILD_DIR:-build/demo}
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DICEBLK_BUILD_TESTS=OFF -DICEBLK_BUILD_BENCH=OFF >/dev/null
  ninja -C "$build" iceblkd >/dev/null
  iceblkd=$build/tools/iceblkd/iceblkd
fi
[[ -x $iceblkd ]] || { echo "demo-fscrypt: no iceblkd binary" >&2; exit 1; }

dir=${keep:-build/demo/fscrypt}
rm -rf "$dir"
cat <<EOF
==================================================================
 iceblk demo, part 5: fscrypt in a Linux guest on the inline crypto engine
   device : iceblkd, $slots keyslots, in-band keys ($iceblkd)
   guest  : linux-source-6.1 + patches/linux (no blk-crypto-fallback), QEMU 7.2 + patches/qemu
   work   : ext4 -O encrypt,stable_inodes; AES-256-XTS (per-file keys), IV_INO_LBLK_64,
            AES-128-CBC-ESSIV; written with inlinecrypt, read with software fscrypt,
            written in software, read with inlinecrypt
==================================================================
booting the guest (under a minute with TCG)...
EOF
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0
tests/e2e/run_fscrypt_e2e.sh --device iceblkd --iceblkd "$iceblkd" --max-slots "$slots" --readers 8 \
  --keep "$dir" >"$out" 2>&1 || rc=$?
if [[ $rc -ne 0 ]]; then
  cat "$out"
  echo "demo-fscrypt: the run FAILED (status $rc)"
  exit 1
fi
serial=$dir/serial.log
echo
echo "--- the guest's view ---------------------------------------------------"
sed -n 's/^ICEBLK-INFO: dmesg: \(virtio_blk virtio0: inline.*\)/  dmesg: \1/p' "$serial"
sed -n 's/^ICEBLK-INFO: \(blk-crypto profile.*\)/  \1/p; s/^ICEBLK-INFO: \(policy .*\)/  \1/p' "$serial"
sed -n 's/^ICEBLK-INFO: dmesg: \(fscrypt: .*blk-crypto.*\)/  dmesg: \1/p' "$serial"
sed -n 's/^ICEBLK-INFO: \(plaintext of .*\)/  \1/p' "$serial"
sed -n 's/^ICEBLK-E2E: step /  step: /p' "$serial"
echo "  $(wc -l <"$dir/manifest.sha256") files: identical through inlinecrypt and software fscrypt, both ways"
echo
echo "--- the device's view (iceblkd, when the export closed) -----------------"
sed -n 's/^  device: /  /p' "$out"
echo
echo "--- the host's view: the image holds ciphertext only ---------------------"
ino=$(awk '$1 == "ICEBLK-STAT:" && $2 == "ino_xts_big1" { print $3 }' "$serial")
echo "  xts/big1-a (inode $ino) on the image, first 64 bytes:"
debugfs -R "dump <$ino> $dir/big1-a.raw" "$dir/disk.img" 2>/dev/null
od -An -c -N 64 "$dir/big1-a.raw" | sed 's/^/   /'
rm -f "$dir/big1-a.raw"
names=$(debugfs -R 'ls /xts' "$dir/disk.img" 2>/dev/null | tr -s ' \n' ' ')
names=${names:0:100}
echo "  names in /xts on the image (debugfs ls): $names..."
sed -n 's/^  host: /  /p' "$out"
echo
echo "kept in $dir: disk.img, master-key.hex, manifest.sha256 (check them with any kernel: docs/guest.md)"
sed -n 's/^RESULT /demo-fscrypt: /p' "$out"
