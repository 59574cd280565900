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
#   scripts/install-deps.sh --qmp    also the qemu.qmp library (PyPI) in build/qmp-venv, for the
#                                    control-socket test with a real QMP client (no Debian package
#                                    exists; without PyPI access that test is skipped)
#   scripts/install-deps.sh --remote  also the RBD and NBD client libraries and what their tests
#                                    need (a one-node Ceph cluster: scripts/ceph-dev-cluster.sh;
#                                    qemu-nbd and nbdkit for NBD servers; qemu-block-extra)
# Groups combine: scripts/install-deps.sh --e2e --bench
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libssl-dev openssl liburing-dev libexpected-dev libfmt-dev libspdlog-dev
      libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest
      libbenchmark-dev e2fsprogs util-linux
      libsystemd-dev systemd help2man groff-base python3 libseccomp-dev gdb)
want_qmp=0
for group in "$@"; do
  case "$group" in
    --e2e) pkgs+=(qemu-system-x86 qemu-utils busybox-static cpio gzip kmod iproute2 procps python3) ;;
    --guest-ice) pkgs+=(dpkg-dev meson ninja-build pkg-config python3 libglib2.0-dev libpixman-1-dev
                        libfdt-dev linux-source-6.1 bc flex bison libelf-dev xz-utils patch
                        cpio gzip) ;;
    --bench) pkgs+=(qemu-system-common qemu-utils python3 python3-matplotlib valgrind) ;;
    --package) pkgs+=(lintian dpkg-dev debootstrap debian-archive-keyring) ;;
    --qmp) pkgs+=(python3 python3-venv); want_qmp=1 ;;
    --remote) pkgs+=(librbd-dev librados-dev libnbd-dev ceph-mon ceph-osd ceph-common nbdkit
                     qemu-utils qemu-block-extra python3 python3-cryptography) ;;
    *) echo "install-deps: unknown group '$group' (use --e2e, --guest-ice, --bench, --package, --qmp, --remote)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# qemu.qmp from PyPI into a venv under build/ (pure Python). A failure (no PyPI
# access) is not fatal: tests/integration/control/qmp_clients_test.py skips its
# qemu.qmp half then.
if ((want_qmp)); then
  venv="$(cd "$(dirname "$0")/.." && pwd)/build/qmp-venv"
  if [[ ! -x $venv/bin/python3 ]] || ! "$venv/bin/python3" -c 'import qemu.qmp' 2>/dev/null; then
    mkdir -p "$(dirname "$venv")"
    if /usr/bin/python3 -m venv "$venv" &&
       timeout 120 "$venv/bin/pip" install -q --disable-pip-version-check --retries 1 --timeout 15 'qemu.qmp>=0.0.3' >&2; then
      echo "install-deps: qemu.qmp installed in $venv" >&2
    else
      echo "install-deps: warning: could not install qemu.qmp from PyPI; its test will be skipped" >&2
    fi
  fi
fi
