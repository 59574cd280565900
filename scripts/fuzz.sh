#!/usr/bin/env bash
# A fuzzing campaign: every libFuzzer target (tests/fuzz/<name>/, built with
# ASan+UBSan by tests/fuzz/run_fuzz.sh in build/fuzz) runs for N minutes EACH (or for
# R executions each with --runs R, or whichever comes first with both), starting
# from its committed corpus (tests/fuzz/<name>/corpus). Afterwards the inputs it found
# are merged into that corpus with -merge=1 (only inputs that add coverage are kept,
# so the committed corpus stays minimal), and one line per target is printed:
#   <target>  <executions>  <exec/s>  cov: <edges>  ft: <features>  corpus: <files> (<bytes>)  <ok | CRASH ...>
# A crash, leak, sanitizer report or timeout keeps its input in
# build/fuzz-campaign/<name>/artifacts and makes the script exit 1.
#   scripts/fuzz.sh --minutes 10                 every target, 10 minutes each
#   scripts/fuzz.sh --minutes 2 --targets "config key_file" --parallel 2
#   scripts/fuzz.sh --runs 10M --parallel 2     10 million executions per target
# While it runs it prints, every minute, each running target's latest libFuzzer line.
# --parallel P runs P targets at once (default 1; the machine has 2 cores).
# --no-merge leaves the committed corpora alone. Results: build/fuzz-campaign/summary.txt.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"

minutes=""
runs=""
parallel=1
merge=1
targets="${ICEBLK_FUZZ_TARGETS:-}"
while (($#)); do
  case "$1" in
    --minutes) minutes="${2:-}"; shift 2 ;;
    --runs) runs="${2:-}"; shift 2 ;;
    --parallel) parallel="${2:-}"; shift 2 ;;
    --targets) targets="${2:-}"; shift 2 ;;
    --no-merge) merge=0; shift ;;
    *) echo "fuzz.sh: unknown option '$1' (--minutes N and/or --runs R[k|M] [--parallel P] [--targets \"a b\"] [--no-merge])" >&2; exit 2 ;;
  esac
done
if [[ -z $minutes && -z $runs ]]; then
  echo "fuzz.sh: --minutes N (minutes per target) or --runs R (executions per target) is required" >&2
  exit 2
fi
limits=()  # libFuzzer stops at the first limit it reaches
if [[ -n $minutes ]]; then
  if ! [[ $minutes =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "fuzz.sh: --minutes takes a number, not '$minutes'" >&2
    exit 2
  fi
  limits+=(-max_total_time="$(awk -v m="$minutes" 'BEGIN { s = int(m * 60); print (s < 1 ? 1 : s) }')")
fi
if [[ -n $runs ]]; then
  if ! [[ $runs =~ ^[1-9][0-9]*[kKM]?$ ]]; then
    echo "fuzz.sh: --runs takes a count such as 500000, 200k or 10M, not '$runs'" >&2
    exit 2
  fi
  case "$runs" in
    *[kK]) runs=$((${runs%?} * 1000)) ;;
    *M) runs=$((${runs%?} * 1000000)) ;;
  esac
  limits+=(-runs="$runs")
fi

build="${ICEBLK_FUZZ_BUILD_DIR:-$src/build/fuzz}"
ICEBLK_FUZZ_BUILD_ONLY=1 ICEBLK_FUZZ_TARGETS="$targets" ICEBLK_FUZZ_BUILD_DIR="$build" "$src/tests/fuzz/run_fuzz.sh"

names=()
for dir in "$src"/tests/fuzz/*/; do
  n="$(basename "$dir")"
  [[ -f "$dir/CMakeLists.txt" ]] || continue
  if [[ -n $targets && " $targets " != *" $n "* ]]; then continue; fi
  names+=("$n")
done

out="$src/build/fuzz-campaign"
mkdir -p "$out"

# One target: fuzz into new/ (reading the committed corpus too), then merge.
run_one() {
  local n="$1" bin="$build/fuzz/fuzz_$1" w="$out/$1"
  rm -rf "$w"
  mkdir -p "$w/new" "$w/artifacts" "$src/tests/fuzz/$n/corpus"
  local rc=0
  ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    "$bin" "${limits[@]}" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$w/artifacts/" "$w/new" "$src/tests/fuzz/$n/corpus" >"$w/log" 2>&1 || rc=$?
  if ((merge)); then
    "$bin" -merge=1 -timeout=20 -rss_limit_mb=4096 "$src/tests/fuzz/$n/corpus" "$w/new" >"$w/merge.log" 2>&1 || true
  fi
  local execs rate cov ft files bytes verdict
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$w/log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$w/log" | tail -n 1)
  cov=$(grep -oE ' cov: [0-9]+' "$w/log" | tail -n 1 | grep -oE '[0-9]+' || true)
  ft=$(grep -oE ' ft: [0-9]+' "$w/log" | tail -n 1 | grep -oE '[0-9]+' || true)
  files=$(find "$src/tests/fuzz/$n/corpus" -type f | wc -l)
  bytes=$(du -sb "$src/tests/fuzz/$n/corpus" | cut -f1)
  if ((rc == 0)); then
    verdict=ok
  else
    verdict="CRASH (exit $rc): $(ls "$w/artifacts" | tr '\n' ' ')"
  fi
  printf '%-16s %12s execs %8s exec/s  cov: %-6s ft: %-6s corpus: %s files (%s bytes)  %s\n' \
    "fuzz_$n" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$files" "$bytes" "$verdict" >"$w/summary"
  cat "$w/summary"
  [[ $verdict == ok ]]
}

echo "== fuzzing ${names[*]}: ${limits[*]} each, $parallel at a time"
# Progress: each running target's latest libFuzzer status line, once a minute.
(
  while sleep 60; do
    for n in "${names[@]}"; do
      log="$out/$n/log"
      [[ -f $log && ! -f $out/$n/summary ]] || continue
      line=$(grep -aE '^#[0-9]+' "$log" | tail -n 1) || continue
      echo "   fuzz_$n: $line"
    done
  done
) &
ticker=$!
trap 'kill $ticker 2>/dev/null || true' EXIT
for n in "${names[@]}"; do
  rm -f "$out/$n/summary"
  run_one "$n" &
  while (($(jobs -rp | wc -l) >= parallel + 1)); do wait -n || true; done
done
kill $ticker 2>/dev/null || true
wait
status=0
: >"$out/summary.txt"
for n in "${names[@]}"; do
  cat "$out/$n/summary" >>"$out/summary.txt" 2>/dev/null || echo "fuzz_$n: no result" >>"$out/summary.txt"
  grep -qE ' ok$' "$out/$n/summary" 2>/dev/null || status=1
done
echo "== summary (also in $out/summary.txt)"
cat "$out/summary.txt"
if ((status)); then
  echo "fuzz.sh: a target failed; its inputs are in $out/<name>/artifacts" >&2
fi
exit $status
