#!/usr/bin/env bash
# The packaged systemd units, as installed: systemd-analyze verify accepts an
# instance of each template without a single warning, the service is Type=notify
# and socket-activated by FileDescriptorName=%i, and `systemd-analyze security
# --offline` rates the service at or below ICEBLK_MAX_EXPOSURE (default 1.5).
#   tests/packaging/units_test.sh BUILD_DIR               (ctest: systemd_units)
set -euo pipefail
build=$1
max=${ICEBLK_MAX_EXPOSURE:-1.5}
command -v systemd-analyze >/dev/null || { echo "units_test: systemd-analyze missing (install-deps.sh)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/iceblk-units.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "units_test: FAIL: $*" >&2; exit 1; }
cmake --install "$build" --prefix "$tmp/prefix" --component daemon >/dev/null
units=$tmp/prefix/lib/systemd/system
service=$units/iceblkd@.service socket=$units/iceblkd@.socket
grep -qx "ExecStart=$tmp/prefix/sbin/iceblkd --config /etc/iceblk/%i.json" "$service" || fail "ExecStart= $(grep ExecStart "$service")"
grep -qx "Type=notify" "$service" || fail "not Type=notify"
grep -qx "FileDescriptorName=%i" "$socket" || fail "socket unit does not name its fd %i"
for directive in NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes CapabilityBoundingSet= \
                 MemoryDenyWriteExecute=yes RestrictAddressFamilies=AF_UNIX; do
  grep -qx "$directive" "$service" || fail "iceblkd@.service lacks $directive"
done

# Instances of the templates, next to them (verify resolves Service=, Requires=).
ln -s iceblkd@.service "$units/iceblkd@vm0.service"
ln -s iceblkd@.socket "$units/iceblkd@vm0.socket"
out=$(cd "$units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$units/iceblkd@vm0.socket" \
      "$units/iceblkd@vm0.service" 2>&1) || fail "systemd-analyze verify: $out"
# verify reports unknown keys and bad values as warnings with exit 0: none allowed.
[[ -z "$out" ]] || fail "systemd-analyze verify printed:
$out"
echo "units_test: systemd-analyze verify: clean"

report=$(systemd-analyze security --offline=true --no-pager "$units/iceblkd@vm0.service" 2>&1) ||
  fail "systemd-analyze security: $report"
score=$(sed -n 's/.*Overall exposure level for iceblkd@vm0.service: \([0-9.]*\).*/\1/p' <<<"$report")
[[ -n "$score" ]] || fail "no exposure level in: $report"
echo "units_test: systemd-analyze security --offline: exposure $score (at most $max allowed)"
grep '✗' <<<"$report" | sed 's/^/units_test:   /' || true
awk -v s="$score" -v m="$max" 'BEGIN { exit !(s <= m) }' || fail "exposure $score > $max"
echo "units_test: 3 passed, 0 failed"
