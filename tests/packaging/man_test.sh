#!/usr/bin/env bash
# The man pages cannot drift from --help: every option that a program's --help
# (and each subcommand's --help) lists appears in its generated man page, and the
# page renders without warnings.
#   tests/packaging/man_test.sh MANDIR ICEBLKD ICEBLK        (ctest: man_pages)
set -euo pipefail
mandir=$1 iceblkd=$2 iceblk=$3
failed=0 passed=0
page_text() { zcat "$1" | sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\f(..//g' -e 's/\\\/,//g' -e 's/\\\///g'; }
check() {  # page, help text
  local page=$1 help=$2 opt missing=()
  local text
  text=$(page_text "$page")
  for opt in $(grep -oE -- '(^|[ ,])--[a-z][a-z0-9-]*' <<<"$help" | sed 's/^[ ,]//' | sort -u); do
    grep -qF -- "$opt" <<<"$text" || missing+=("$opt")
  done
  if ((${#missing[@]})); then
    echo "man_test: FAIL: $(basename "$page") lacks ${missing[*]}" >&2
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
}
check "$mandir/iceblkd.8.gz" "$("$iceblkd" --help)"
check "$mandir/iceblk.1.gz" "$("$iceblk" --help)"
for sub in info read write verify bench conformance; do
  check "$mandir/iceblk.1.gz" "$("$iceblk" "$sub" --help)"
done
# Every subcommand has its own subsection.
for sub in info read write verify bench conformance; do
  if zcat "$mandir/iceblk.1.gz" | grep "^\.SS $sub\$" >/dev/null; then passed=$((passed + 1)); else
    echo "man_test: FAIL: iceblk.1 has no subsection for $sub" >&2; failed=$((failed + 1)); fi
done
# They render cleanly (groff warnings are errors here).
for page in "$mandir/iceblkd.8.gz" "$mandir/iceblk.1.gz"; do
  warnings=$(zcat "$page" | groff -man -Tutf8 -ww -z 2>&1 || true)
  if [[ -n "$warnings" ]]; then
    echo "man_test: FAIL: $(basename "$page") renders with warnings:" >&2
    echo "$warnings" >&2
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
done
echo "man_test: $passed passed, $failed failed"
((failed == 0))
