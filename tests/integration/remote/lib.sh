# Shared by the remote-image tests (nbd_test.sh, rbd_test.sh): start iceblkd on an
# image, run the conformance suite plain and ICE, check the medium holds AES-XTS of
# the plaintext. Callers set ICEBLKD, ICEBLK, T (a temp dir) and define
# read_raw OFFSET LENGTH OUT (the medium's bytes, bypassing iceblkd).
here_remote=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }
wait_sock() { for _ in $(seq 400); do [[ -S $1 ]] && return 0; sleep 0.05; done; return 1; }

# write_recovers SOCK TRIES: retry a 64K seeded write every 0.5 s until the export
# accepts it again (the storage came back); fails after TRIES attempts.
write_recovers() {
  local _
  for _ in $(seq "$2"); do
    "$ICEBLK" write -s "$1" --offset 0 --length 64K --pattern seed:6 >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

# start_daemon NAME ARGS...: iceblkd in the background, log in $T/NAME.log, pid in
# $daemon_pid; waits for its vhost-user socket (--socket must be among ARGS or in
# the config).
start_daemon() {
  local name=$1 sock=$2
  shift 2
  "$ICEBLKD" "$@" >"$T/$name.log" 2>&1 &
  daemon_pid=$!
  wait_sock "$sock" || { cat "$T/$name.log" >&2; fail "$name: iceblkd did not create $sock"; }
}

stop_daemon() {
  kill -TERM "$daemon_pid" 2>/dev/null || true
  local rc=0
  wait "$daemon_pid" || rc=$?
  [[ $rc -eq 0 ]] || { cat "$T/$1.log" >&2; fail "$1: iceblkd exited with $rc on SIGTERM"; }
}

# conformance NAME SOCKET: the whole suite, no failure.
conformance() {
  "$ICEBLK" conformance -s "$2" >"$T/$1.conformance" 2>&1 || { cat "$T/$1.conformance" >&2; fail "$1: conformance"; }
  grep -q ", 0 failed," "$T/$1.conformance" || fail "$1: conformance reported failures"
  echo "ok: $1: $(tail -1 "$T/$1.conformance")"
}

# ciphertext NAME SOCKET OFFSET: writes 64 KiB of random plaintext through the ICE
# (AES-256-XTS, 4 KiB data units), then checks the medium holds exactly the
# reference ciphertext and no plaintext, and that it reads back decrypted.
ciphertext() {
  local name=$1 sock=$2 off=$3 len=65536
  python3 -c "print(bytes(range(0x21, 0x61)).hex())" >"$T/key.hex"
  head -c $len /dev/urandom >"$T/plain.bin"
  "$ICEBLK" write -s "$sock" --offset "$off" --length $len --file "$T/plain.bin" --key-file "$T/key.hex" \
    >/dev/null || fail "$name: encrypted write"
  python3 "$here_remote/xts_reference.py" "$T/key.hex" $((off / 4096)) 4096 "$T/plain.bin" "$T/expect.bin"
  read_raw "$off" $len "$T/raw.bin"
  cmp -s "$T/raw.bin" "$T/expect.bin" || fail "$name: the medium does not hold AES-256-XTS of the plaintext"
  cmp -s "$T/raw.bin" "$T/plain.bin" && fail "$name: plaintext on the medium"
  "$ICEBLK" read -s "$sock" --offset "$off" --length $len --file "$T/back.bin" --key-file "$T/key.hex" \
    >/dev/null || fail "$name: encrypted read"
  cmp -s "$T/back.bin" "$T/plain.bin" || fail "$name: read back differs from what was written"
  echo "ok: $name: the medium holds only AES-256-XTS ciphertext, equal to the reference"
}
