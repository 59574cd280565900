#!/usr/bin/env bash
# Build every libFuzzer target (tests/fuzz/<name>/ -> fuzz_<name>) in a separate
# clang build (<source>/build/fuzz) and run each for ICEBLK_FUZZ_SECONDS (default
# 30) on a temporary copy of its seed corpus. Exit 1 if any target crashes.
# Without clang: prints "skipped: clang not found" and exits 0.
# Env: ICEBLK_FUZZ_SECONDS, ICEBLK_FUZZ_JOBS (build parallelism, default 2),
#      ICEBLK_FUZZ_BUILD_DIR (default <source>/build/fuzz), ICEBLK_FUZZ_TARGETS
#      (space-separated names to restrict to, e.g. "chain_walker"),
#      ICEBLK_FUZZ_BUILD_ONLY=1 (build the targets and stop: scripts/fuzz.sh uses it).
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if ! command -v clang >/dev/null 2>&1 || ! command -v clang++ >/dev/null 2>&1; then
  echo "skipped: clang not found"
  exit 0
fi

secs="${ICEBLK_FUZZ_SECONDS:-30}"
jobs="${ICEBLK_FUZZ_JOBS:-2}"
build="${ICEBLK_FUZZ_BUILD_DIR:-$src/build/fuzz}"

names=()
for dir in "$src"/tests/fuzz/*/; do
  name="$(basename "$dir")"
  [[ -f "$dir/CMakeLists.txt" ]] || continue
  if [[ -n "${ICEBLK_FUZZ_TARGETS:-}" && " $ICEBLK_FUZZ_TARGETS " != *" $name "* ]]; then continue; fi
  names+=("$name")
done
if [[ ${#names[@]} -eq 0 ]]; then
  echo "no fuzz targets found"
  exit 0
fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
mkdir -p "$build"
log="$build/configure.log"
echo "== configuring $build"
CC=clang CXX=clang++ cmake -S "$src" -B "$build" "${generator[@]}" \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DICEBLK_FUZZ=ON -DICEBLK_BUILD_TESTS=OFF -DICEBLK_BUILD_BENCH=OFF >"$log" 2>&1 || {
  cat "$log"; echo "fuzz: configure failed"; exit 1; }

targets=()
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
echo "== building ${targets[*]}"
cmake --build "$build" --parallel "$jobs" --target "${targets[@]}"
if [[ "${ICEBLK_FUZZ_BUILD_ONLY:-0}" == 1 ]]; then exit 0; fi

status=0
for n in "${names[@]}"; do
  bin="$build/fuzz/fuzz_$n"
  work="$(mktemp -d "${TMPDIR:-/tmp}/iceblk-fuzz-$n.XXXXXX")"
  mkdir -p "$work/corpus" "$work/artifacts"
  if [[ -d "$src/tests/fuzz/$n/corpus" ]]; then
    cp -r "$src/tests/fuzz/$n/corpus/." "$work/corpus/"
  fi
  echo "== fuzz_$n for ${secs}s"
  if ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}" \
     UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
     "$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
       -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1; then
    grep -E "^(stat::number_of_executed_units|Done)" "$work/log" || tail -n 3 "$work/log"
    echo "fuzz_$n: ok"
    rm -rf "$work"
  else
    tail -n 60 "$work/log"
    echo "fuzz_$n: FAILED; crash inputs kept in $work/artifacts:"
    ls -l "$work/artifacts"
    status=1
  fi
done
exit $status
