#!/usr/bin/env bash
# Installs the build tree into a temporary prefix (cmake --install) and uses only
# that tree: a consumer program built with find_package(iceblk) and one built with
# pkg-config (iceblk.pc) talk to the installed iceblkd; the installed iceblk CLI and
# man pages are there too. Neither build may see the source or build tree.
#   tests/packaging/install_test.sh BUILD_DIR SOURCE_DIR      (ctest: install_tree)
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
tmp=$(mktemp -d /tmp/iceblk-install.XXXXXX)
daemon_pid=""
cleanup() {
  if [[ -n "$daemon_pid" ]]; then kill -KILL "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "install_test: FAIL: $*" >&2; exit 1; }
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" --strip >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install"; }
for f in sbin/iceblkd bin/iceblk; do [[ -x $prefix/$f ]] || fail "$f not installed"; done
for f in include/iceblk/device.h share/man/man8/iceblkd.8.gz share/man/man1/iceblk.1.gz \
         lib/systemd/system/iceblkd@.service lib/systemd/system/iceblkd@.socket; do
  [[ -f $prefix/$f ]] || fail "$f not installed"
done
lib=$(find "$prefix" -name libiceblk_driver.a -print -quit)
[[ -n "$lib" ]] || fail "libiceblk_driver.a not installed"
libdir=$(dirname "$lib")
grep -q "ExecStart=$prefix/sbin/iceblkd " "$prefix/lib/systemd/system/iceblkd@.service" ||
  fail "iceblkd@.service does not start the installed iceblkd"
echo "install_test: installed tree OK ($(du -sh "$prefix" | cut -f1))"

# The consumer, copied out of the source tree.
cp -r "$src/tests/packaging/consumer" "$tmp/consumer"
cmake -S "$tmp/consumer" -B "$tmp/cmake-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >"$tmp/cmake.log" 2>&1 ||
  { cat "$tmp/cmake.log"; fail "configuring the find_package consumer"; }
ninja -C "$tmp/cmake-build" >"$tmp/ninja.log" 2>&1 || { cat "$tmp/ninja.log"; fail "building the find_package consumer"; }
ninja -C "$tmp/cmake-build" -t commands >"$tmp/commands.txt"
if grep -F -e "$src" -e "$build" "$tmp/commands.txt"; then fail "the find_package build used the source or build tree"; fi
echo "install_test: find_package(iceblk) consumer built"

export PKG_CONFIG_PATH=$libdir/pkgconfig
pkg-config --exists iceblk || fail "pkg-config does not find iceblk"
flags=$(pkg-config --cflags --libs iceblk)
if grep -F -e "$src" -e "$build" <<<"$flags"; then fail "iceblk.pc points into the source or build tree"; fi
c++ -O1 "$tmp/consumer/consumer.cc" $flags -o "$tmp/consumer-pc" 2>"$tmp/pc.log" ||
  { cat "$tmp/pc.log"; fail "building the pkg-config consumer: c++ consumer.cc $flags"; }
echo "install_test: pkg-config consumer built ($flags)"

# Run them against the installed daemon.
sock=$tmp/vm0.sock
"$prefix/sbin/iceblkd" --socket "$sock" --image "$tmp/disk.img" --size 16M >"$tmp/iceblkd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || { cat "$tmp/iceblkd.log"; fail "installed iceblkd did not listen"; }
"$tmp/cmake-build/consumer" "$sock" || fail "find_package consumer failed"
"$tmp/consumer-pc" "$sock" || fail "pkg-config consumer failed"
"$prefix/bin/iceblk" info -s "$sock" | grep -i "ice" >/dev/null || fail "installed iceblk info failed"
"$prefix/sbin/iceblkd" --version | sed -n 1p | grep "^iceblkd [0-9]" >/dev/null || fail "installed iceblkd --version"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || { cat "$tmp/iceblkd.log"; fail "iceblkd did not exit 0 after SIGTERM"; }
daemon_pid=""
echo "install_test: 3 passed, 0 failed"
