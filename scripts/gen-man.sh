#!/usr/bin/env bash
# Generates a man page from a program's own --help and --version (help2man), plus
# the hand-written sections in docs/man/<name>.h2m, so the page cannot drift from
# the options the program accepts. For a program with subcommands, each
# subcommand's --help becomes a subsection of COMMANDS.
#   scripts/gen-man.sh BINARY SECTION "SHORT DESCRIPTION" INCLUDE.h2m OUT.gz [SUBCOMMAND...]
# Run by the build (cmake/man.cmake); needs help2man (scripts/install-deps.sh).
set -euo pipefail
bin=$1 section=$2 desc=$3 include=$4 out=$5
shift 5
name=$(basename "$bin")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# roff-escape plain text for a .nf block: backslashes, hyphens, leading . and '.
roff_text() { sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }

cp "$include" "$tmp/include.h2m"
if (($# > 0)); then
  {
    echo "[COMMANDS]"
    for sub in "$@"; do
      echo ".SS $sub"
      echo ".nf"
      # The usage line names the binary as invoked; show the program's name.
      "$bin" "$sub" --help | sed -e "s#$bin#$name#g" | roff_text
      echo ".fi"
    done
  } >>"$tmp/include.h2m"
fi
# A stable date for reproducible pages: the commit's, when there is one.
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH=$(git -C "$(dirname "$include")" log -1 --format=%ct 2>/dev/null || date +%s)
  export SOURCE_DATE_EPOCH
fi
help2man --no-info --no-discard-stderr --section="$section" --name="$desc" --include="$tmp/include.h2m" \
  --output="$tmp/page" "$bin"
sed -i -e "s#$bin#$name#g" "$tmp/page"
gzip -9n <"$tmp/page" >"$out.tmp"
mv "$out.tmp" "$out"
