#!/usr/bin/env bash
# The main job: a demo of iceblk. Installs what it needs, builds, runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${ICEBLK_BUILD_DIR:-build/demo}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DICEBLK_BUILD_TESTS=OFF -DICEBLK_BUILD_BENCH=OFF >/dev/null
ninja -C "$build"
echo "demo: nothing to run yet"
