#!/usr/bin/env bash
# Builds iceblk (warnings as errors) and runs every test: unit, conformance,
# integration over real sockets, fuzz smoke runs (when clang is present) and the
# QEMU end-to-end guests. Installs its own dependencies first.
#   scripts/test.sh              everything
#   ICEBLK_TEST_FILTER=unit scripts/test.sh   only tests with that ctest label
set -euo pipefail
cd "$(dirname "$0")/.."

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
