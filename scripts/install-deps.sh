#!/usr/bin/env bash
# Installs the Debian 12 packages iceblk needs to build and test. Idempotent:
# packages already present are skipped, so a second run does no network work.
#   scripts/install-deps.sh          build + unit test dependencies
#   scripts/install-deps.sh --e2e    also QEMU, busybox and cpio for the guest tests (and ss,
#                                    ps/pgrep, python3 for the demo and its test)
#   scripts/install-deps.sh --guest-ice  also what scripts/build-qemu.sh and
#                                    scripts/build-guest-kernel.sh need (QEMU and kernel
#                                    build dependencies, linux-source-6.1; docs/guest.md)
#   scripts/install-deps.sh --bench  also what bench/run_e2e_bench.sh needs (qemu-storage-daemon,
#                                    qemu-img, python3-matplotlib, valgrind for profiling)
#   scripts/install-deps.sh --package  also what scripts/package.sh and its tests need (lintian,
#                                    dpkg-dev, debootstrap for the clean-root install test)
# Groups combine: scripts/install-deps.sh --e2e --bench
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libssl-dev openssl liburing-dev libexpected-dev libfmt-dev libspdlog-dev
      libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest
      libbenchmark-dev e2fsprogs util-linux
      libsystemd-dev systemd help2man groff-base python3)
for group in "$@"; do
  case "$group" in
    --e2e) pkgs+=(qemu-system-x86 qemu-utils busybox-static cpio gzip kmod iproute2 procps python3) ;;
    --guest-ice) pkgs+=(dpkg-dev meson ninja-build pkg-config python3 libglib2.0-dev libpixman-1-dev
                        libfdt-dev linux-source-6.1 bc flex bison libelf-dev xz-utils patch
                        cpio gzip) ;;
    --bench) pkgs+=(qemu-system-common qemu-utils python3 python3-matplotlib valgrind) ;;
    --package) pkgs+=(lintian dpkg-dev debootstrap debian-archive-keyring) ;;
    *) echo "install-deps: unknown group '$group' (use --e2e, --guest-ice, --bench, --package)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
