#!/usr/bin/env python3
"""Seed inputs for fuzz_vhost_messages: [fd count][12-byte header][payload]."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
V1 = 0x1  # version 1 in the flags
NEED_REPLY = 1 << 3


def msg(nfds, req, payload=b"", flags=V1):
    return bytes([nfds]) + struct.pack("<III", req, flags, len(payload)) + payload


seeds = {
    "get_features": msg(0, 1),
    "set_features": msg(0, 2, struct.pack("<Q", 1 << 32)),
    "set_owner": msg(0, 3),
    "set_mem_table_1": msg(1, 5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 1 << 20, 0x7f0000000000, 0)),
    "set_vring_num": msg(0, 8, struct.pack("<II", 0, 256)),
    "set_vring_addr": msg(0, 9, struct.pack("<IIQQQQ", 0, 0, 0x1000, 0x2000, 0x3000, 0)),
    "set_vring_kick": msg(1, 12, struct.pack("<Q", 0)),
    "set_vring_call_nofd": msg(0, 13, struct.pack("<Q", 1 << 8)),
    "get_config": msg(0, 24, struct.pack("<III", 0, 60, 0) + bytes(60)),
    "set_protocol_features": msg(0, 16, struct.pack("<Q", 0x3), V1 | NEED_REPLY),
    "add_mem_reg": msg(1, 37, struct.pack("<Q", 0) + struct.pack("<QQQQ", 0, 1 << 20, 0x7f0000000000, 0)),
}
os.makedirs(os.path.join(HERE, "corpus"), exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(HERE, "corpus", name), "wb") as f:
        f.write(data)
