#!/usr/bin/env python3
"""A stand-in for systemd-journald's native socket, for the journal test.

Binds a unix datagram socket at PATH and appends each record it receives, as one
JSON object of its fields per line, to OUT (the raw datagrams go to OUT.raw).
Understands the native protocol: KEY=VALUE lines, the binary-safe form
(KEY\\n<le64 length><value>\\n) and records passed as a memfd (SCM_RIGHTS).
Runs until killed.  Usage: journal_receiver.py PATH OUT
"""
import array
import json
import os
import socket
import struct
import sys


def parse(data: bytes) -> dict:
    fields = {}
    i = 0
    while i < len(data):
        nl = data.find(b"\n", i)
        eq = data.find(b"=", i)
        if nl < 0:
            nl = len(data)
        if 0 <= eq < nl:
            key, value, i = data[i:eq], data[eq + 1:nl], nl + 1
        else:
            key = data[i:nl]
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        fields[key.decode()] = value.decode(errors="replace")
    return fields


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    with open(out, "a") as f, open(out + ".raw", "ab") as raw:
        while True:
            fds = array.array("i")
            data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(16))
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
            for fd in fds:
                data = os.pread(fd, 1 << 24, 0)
                os.close(fd)
            raw.write(data + b"\n\0\n")
            raw.flush()
            f.write(json.dumps(parse(data)) + "\n")
            f.flush()


if __name__ == "__main__":
    main()
