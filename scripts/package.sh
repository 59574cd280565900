#!/usr/bin/env bash
# Builds the Debian packages from the install rules (CPack DEB, cmake/package.cmake)
# and checks them with lintian:
#   out/package/iceblk_<version>_amd64.deb         iceblkd, iceblk, man pages, systemd units
#   out/package/libiceblk-dev_<version>_amd64.deb  libiceblk_driver.a, headers, CMake config, iceblk.pc
#   scripts/package.sh                      build in build/package (no tests, no benchmarks)
#   scripts/package.sh --build-dir DIR      package an already configured build tree (the
#                                           test suite packages build/test this way)
#   scripts/package.sh --out DIR            where the .deb files go (default out/package)
# Installs what it needs (scripts/install-deps.sh --package). Fails when lintian
# reports an error; its warnings are printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="" out=$root/out/package
while (($#)); do
  case "$1" in
    --build-dir) build=$(realpath -m "$2"); shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    *) echo "package.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
"$root/scripts/install-deps.sh" --package

if [[ -z "$build" ]]; then
  build=$root/build/package
  # Debian's hardening flags (dpkg-buildflags: fortify, stack protector, relro) plus
  # immediate binding, as a Debian package build would use.
  cxxflags="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CXXFLAGS)"
  ldflags="$(dpkg-buildflags --get LDFLAGS) -Wl,-z,now"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
    -DCMAKE_CXX_FLAGS="$cxxflags" -DCMAKE_EXE_LINKER_FLAGS="$ldflags" \
    -DICEBLK_WERROR=ON -DICEBLK_BUILD_TESTS=OFF -DICEBLK_BUILD_BENCH=OFF >/dev/null
fi
ninja -C "$build" >/dev/null
mkdir -p "$out"
rm -f "$out"/*.deb
# cpack reads CPackConfig.cmake from the current directory.
(cd "$build" && cpack -G DEB -B "$out" >"$out/cpack.log" 2>&1) || { cat "$out/cpack.log" >&2; exit 1; }
rm -rf "$out/_CPack_Packages"
shopt -s nullglob
debs=("$out"/*.deb)
((${#debs[@]} == 2)) || { echo "package.sh: expected 2 packages in $out, got ${#debs[@]}" >&2; exit 1; }
for deb in "${debs[@]}"; do
  echo "package.sh: $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB): $(dpkg-deb -f "$deb" Depends)"
done
# lintian: errors fail the build; everything it says is shown.
status=0
lintian --tag-display-limit 0 --display-level '>=info' "${debs[@]}" >"$out/lintian.txt" 2>&1 || status=$?
sed 's/^/package.sh: lintian: /' "$out/lintian.txt"
if grep -q '^E: ' "$out/lintian.txt" || ((status != 0 && status != 2)); then
  echo "package.sh: lintian reports errors (exit $status)" >&2
  exit 1
fi
echo "package.sh: lintian: $(grep -c '^E: ' "$out/lintian.txt" || true) errors, $(grep -c '^W: ' "$out/lintian.txt" || true) warnings"
