#!/usr/bin/env bash
# iceblkd's journal logging, against a stand-in for journald's native socket
# (journal_receiver.py) bound at /run/systemd/journal/socket inside a private mount
# namespace (a tmpfs over /run there; the host's /run is not touched):
#   - --log-target journal: every record goes to the journal, none to stderr, with
#     PRIORITY (info 6, debug 7), SYSLOG_IDENTIFIER=iceblkd, ICEBLK_LOGGER, and
#     ICEBLK_EXPORT / ICEBLK_QUEUE on the records of an export's threads;
#   - the key that the CLI programs never appears, as hex or as bytes;
#   - --log-target auto: the journal when JOURNAL_STREAM names stderr, otherwise
#     today's stderr format.
#   tests/integration/daemon/journal_test.sh ICEBLKD ICEBLK   (ctest: iceblkd_journal; root)
set -euo pipefail
iceblkd=$1 iceblk=$2
here=$(cd "$(dirname "$0")" && pwd)
if [[ $(id -u) -ne 0 ]]; then echo "journal_test: skipped: needs root (mount namespace)"; exit 77; fi
tmp=$(mktemp -d /tmp/iceblk-journal.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export ICEBLKD=$iceblkd ICEBLK=$iceblk HERE=$here T=$tmp

unshare --mount --propagation private bash -c '
set -euo pipefail
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
python3 "$HERE/journal_receiver.py" /run/systemd/journal/socket "$T/journal.jsonl" &
rpid=$!
trap "kill $rpid 2>/dev/null || true" EXIT
for _ in $(seq 200); do [[ -S /run/systemd/journal/socket ]] && break; sleep 0.02; done
wait_sock() { for _ in $(seq 200); do [[ -S $1 ]] && return 0; sleep 0.05; done; return 1; }

# A 64-byte AES-256-XTS key, as hex text; distinct halves.
python3 -c "print(bytes(range(0x41, 0x81)).hex())" >"$T/key.hex"

# 1. --log-target journal
"$ICEBLKD" --log-target journal --log-level debug --name web --socket "$T/web.sock" --image "$T/web.img" \
  --size 16M 2>"$T/stderr1" &
pid=$!
wait_sock "$T/web.sock"
"$ICEBLK" write -s "$T/web.sock" --offset 0 --length 64K --pattern seed:7 --key-file "$T/key.hex" >/dev/null 2>&1
"$ICEBLK" read -s "$T/web.sock" --offset 0 --length 64K --pattern seed:7 --key-file "$T/key.hex" >/dev/null 2>&1
"$ICEBLK" conformance -s "$T/web.sock" >"$T/conformance.txt"
kill -TERM $pid
wait $pid
echo "run1-done" >"$T/marker1"
sleep 0.2

# 2. auto, stderr is "the journal stream" (JOURNAL_STREAM names it)
: >"$T/stderr2"
JOURNAL_STREAM=$(stat -c %d:%i "$T/stderr2") "$ICEBLKD" --name db --socket "$T/db.sock" --image "$T/db.img" \
  --size 16M 2>>"$T/stderr2" &
pid=$!
wait_sock "$T/db.sock"
kill -TERM $pid
wait $pid

# 3. auto, JOURNAL_STREAM names another file: stderr as today
JOURNAL_STREAM=1:1 "$ICEBLKD" --name plain --socket "$T/plain.sock" --image "$T/plain.img" --size 16M \
  2>"$T/stderr3" &
pid=$!
wait_sock "$T/plain.sock"
kill -TERM $pid
wait $pid
sleep 0.2
'

python3 - "$tmp" <<'PY'
import json, re, sys
t = sys.argv[1]
recs = [json.loads(l) for l in open(f"{t}/journal.jsonl")]
raw = open(f"{t}/journal.jsonl.raw", "rb").read()
key_hex = open(f"{t}/key.hex").read().strip()
key = bytes.fromhex(key_hex)
passed = failed = 0
def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"journal_test: FAIL: {what}", file=sys.stderr)
def export_recs(name):
    return [r for r in recs if r.get("ICEBLK_EXPORT") == name]
web = [r for r in recs if "web" in r.get("MESSAGE", "") or r.get("ICEBLK_EXPORT") == "web"]
check(all(r.get("SYSLOG_IDENTIFIER") == "iceblkd" for r in recs), "SYSLOG_IDENTIFIER=iceblkd on every record")
check(all(r.get("ICEBLK_LOGGER") in ("iceblkd", "secure_world.audit") for r in recs), "ICEBLK_LOGGER on every record")
check(any(r.get("PRIORITY") == "6" and r.get("ICEBLK_EXPORT") == "web" and "export 'web'" in r["MESSAGE"]
          for r in recs), "the export's start record: PRIORITY=6, ICEBLK_EXPORT=web")
check(any(r.get("ICEBLK_EXPORT") == "web" and "front-end connected" in r["MESSAGE"] for r in recs),
      "connect records carry ICEBLK_EXPORT=web")
q = [r for r in recs if "ICEBLK_QUEUE" in r]
check(len(q) > 0 and all(r.get("ICEBLK_EXPORT") == "web" for r in q if "web" in r.get("ICEBLK_EXPORT", "web")),
      "records from a queue worker carry ICEBLK_QUEUE (and the export)")
check(any(r.get("PRIORITY") == "7" and "ICEBLK_QUEUE" in r for r in recs),
      "guest-caused request errors at debug (PRIORITY=7) with ICEBLK_QUEUE")
check(any("shut down cleanly" in r.get("MESSAGE", "") for r in recs), "the shutdown record")
check(key_hex.encode() not in raw and key_hex.upper().encode() not in raw and key not in raw
      and key[:32] not in raw and key[32:] not in raw, "no key bytes in the journal")
check(open(f"{t}/stderr1").read() == "", "--log-target journal writes nothing to stderr")
check(any(r.get("ICEBLK_EXPORT") == "db" for r in recs), "auto + JOURNAL_STREAM naming stderr: to the journal")
check(open(f"{t}/stderr2").read() == "", "auto + JOURNAL_STREAM naming stderr: nothing on stderr")
check(not any("plain" in r.get("MESSAGE", "") or r.get("ICEBLK_EXPORT") == "plain" for r in recs),
      "auto, stderr not the journal: nothing to the journal")
s3 = open(f"{t}/stderr3").read()
check(re.search(r"^\[[0-9-]+ [0-9:.]+\] \[iceblkd\] \[info\] export 'plain'", s3, re.M) is not None,
      "auto, stderr not the journal: today's stderr format")
print(f"journal_test: {len(recs)} records, {len(q)} with ICEBLK_QUEUE")
print(f"journal_test: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
