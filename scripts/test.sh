#!/usr/bin/env bash
# Builds iceblk (warnings as errors) and runs every test: unit, conformance,
# integration over real sockets, fuzz smoke runs (when clang is present) and the
# QEMU end-to-end guests. Installs its own dependencies first.
#   scripts/test.sh              everything
#   ICEBLK_TEST_FILTER=unit scripts/test.sh   only tests with that ctest label
#   scripts/test.sh --sanitize thread    the whole project built with ThreadSanitizer in
#                                        build/tsan, and the suite run on it
#   scripts/test.sh --sanitize address   the same with AddressSanitizer + UBSan, build/asan
# Under --sanitize the ctest run is `-LE 'e2e|fuzz|install|package'` (ICEBLK_TEST_EXCLUDE
# overrides it):
#   e2e   the QEMU guests: under TCG they spend their minutes in QEMU and the guest
#         kernel, neither of which is instrumented; the daemon code they reach (session,
#         rings, queue processor, engine) is what the integration tests drive with the
#         in-process driver, which is instrumented on both sides.
#   fuzz  fuzz_smoke builds its own ASan+UBSan libFuzzer tree (build/fuzz) already.
#   install, package  install the sanitized libraries and link a consumer (or a .deb)
#         built without the sanitizer, which cannot link them (undefined __tsan_*).
# Under --sanitize thread, remote_rbd is left out too: Debian's Ceph client libraries
# (librbd, librados, libceph-common) are not built with TSan, so TSan sees their threads'
# memory and pthread calls but none of their atomics, and reports their own internal
# synchronisation (in rados connect, MonClient, AioCompletion release, buffer frees, with
# stacks that end in libstdc++) as races; no suppression short of all of Ceph silences
# it. The rbd backend's one shared structure is a mutex-guarded list its callbacks push
# to (src/backend/rbd_backend.cc); remote_nbd and the ASan run cover the rest.
# Sanitizer reports fail the test that printed them (halt_on_error / exitcode below);
# suppressions for third-party code only: tests/sanitizers/*.supp.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=""
while (($#)); do
  case "$1" in
    --sanitize)
      sanitize="${2:-}"; shift 2 || { echo "test.sh: --sanitize needs thread|address" >&2; exit 2; } ;;
    --sanitize=*) sanitize="${1#--sanitize=}"; shift ;;
    *) echo "test.sh: unknown option '$1' (use --sanitize thread|address)" >&2; exit 2 ;;
  esac
done
case "$sanitize" in
  ""|thread|address) ;;
  *) echo "test.sh: --sanitize takes thread or address, not '$sanitize'" >&2; exit 2 ;;
esac

if [[ -n $sanitize ]]; then
  scripts/install-deps.sh
  supp="$PWD/tests/sanitizers"
  if [[ $sanitize == thread ]]; then
    build=${ICEBLK_BUILD_DIR:-build/tsan}
    export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 suppressions=$supp/tsan.supp ${TSAN_OPTIONS:-}"
  else
    build=${ICEBLK_BUILD_DIR:-build/asan}
    export ASAN_OPTIONS="abort_on_error=1 detect_leaks=1 detect_stack_use_after_return=1 ${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 suppressions=$supp/ubsan.supp ${UBSAN_OPTIONS:-}"
    export LSAN_OPTIONS="suppressions=$supp/lsan.supp ${LSAN_OPTIONS:-}"
  fi
  # Warnings are the normal build's job (-Werror there); gcc adds -Wtsan notes here.
  cmake -S . -B "$build" -G Ninja -DICEBLK_SANITIZE="$sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DICEBLK_BUILD_BENCH=OFF >/dev/null
  ninja -C "$build"
  label_args=(-LE "${ICEBLK_TEST_EXCLUDE:-e2e|fuzz|install|package}")
  if [[ -n "${ICEBLK_TEST_FILTER:-}" ]]; then label_args+=(-L "$ICEBLK_TEST_FILTER"); fi
  if [[ $sanitize == thread ]]; then label_args+=(-E '^remote_rbd$'); fi
  ctest --test-dir "$build" --output-on-failure --timeout 1800 -j2 "${label_args[@]}"
  exit 0
fi

scripts/install-deps.sh --e2e --guest-ice --package --qmp --remote
# The patched QEMU and guest kernel for the inline-encryption tests (docs/guest.md):
# about 3 minutes each on a fresh machine, then cached by the hash of their inputs.
scripts/build-qemu.sh
if [[ -x scripts/prepare-guest.sh ]]; then
  scripts/prepare-guest.sh --ice   # guest kernels + initramfs for the e2e tests (cached)
fi

build=${ICEBLK_BUILD_DIR:-build/test}
cmake -S . -B "$build" -G Ninja -DICEBLK_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build"

label_args=()
if [[ -n "${ICEBLK_TEST_FILTER:-}" ]]; then label_args=(-L "$ICEBLK_TEST_FILTER"); fi
ctest --test-dir "$build" --output-on-failure --timeout 900 -j2 "${label_args[@]}"
