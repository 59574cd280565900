#!/usr/bin/env bash
# End-to-end benchmark, one command: iceblkd (plain and ICE) side by side with
# qemu-storage-daemon (raw and LUKS), all driven by `iceblk bench` on tmpfs images of
# one size, plus the OpenSSL AES-256-XTS ceiling. Prints the table and the ratios,
# writes out/e2e-bench/{results.json,table.txt,chart.png} and regenerates the
# end-to-end section of docs/benchmarks.md (--no-docs to skip).
#
#   bench/run_e2e_bench.sh                       # 5 s per run, 1 round, 1 GiB images
#   bench/run_e2e_bench.sh --runtime 10 --rounds 3 --size 2G
#   BENCH_RUNTIME=2 bench/run_e2e_bench.sh --no-docs
#   bench/run_e2e_bench.sh --scale               # 1/4/16 exports, 1/2/4 queues, 4K..1M (~3 min)
#   bench/run_e2e_bench.sh --scale --runtime 1 --rounds 1
#   bench/run_e2e_bench.sh --backend rbd --runtime 3 # on Ceph RBD (~1.5 min)
#
# --scale runs bench/e2e/scale_bench.py instead (its --help lists its options): CPU
# per request and per byte as exports, queues and request sizes grow, a key-churn
# run and the 16-export daemon's VmHWM; it regenerates the scale section of
# docs/benchmarks.md.
#
# --backend rbd runs the same four configurations on RBD images in a one-node dev
# cluster of its own (scripts/ceph-dev-cluster.sh; qemu-storage-daemon through QEMU's
# driver=rbd), and regenerates the RBD section of docs/benchmarks.md and its chart.
#
# Every option of bench/e2e/e2e_bench.py passes through (--help lists them). The build
# goes to $ICEBLK_BUILD_DIR (default build/bench, RelWithDebInfo).
set -euo pipefail
cd "$(dirname "$0")/.."

deps=(--bench)
[[ " $* " == *" --backend rbd "* || " $* " == *" --backend=rbd "* ]] && deps+=(--remote)
scripts/install-deps.sh "${deps[@]}"

build=${ICEBLK_BUILD_DIR:-build/bench}
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
ninja -C "$build" iceblkd iceblk

# Debian's interpreter (python3-matplotlib is a Debian package), not a pyenv/venv shim.
py=/usr/bin/python3
[[ -x $py ]] || py=python3
script=bench/e2e/e2e_bench.py
args=()
for a in "$@"; do
  if [[ $a == --scale ]]; then script=bench/e2e/scale_bench.py; else args+=("$a"); fi
done
exec "$py" "$script" --build-dir "$build" ${args[@]+"${args[@]}"}
