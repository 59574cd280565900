#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_secure_world (see secure_world_fuzz.cc for the
input layout): valid requests and a few near misses. Run from anywhere; writes ./corpus/."""
import os
import struct

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
MAGIC = 0x57534349


def hdr(op, length, magic=MAGIC, reserved=0):
    return struct.pack("<IHHI", magic, op, reserved, length)


def blob(alg, exp, ks, key, key_len=None, reserved=0, key_type=0):
    n = len(key) if key_len is None else key_len
    return struct.pack("<BBBBHH", alg, exp, ks, key_type, n, reserved) + key + bytes(128 - len(key))


XTS256 = bytes(range(1, 65))
XTS128 = bytes(range(1, 33))
ESSIV = bytes(range(1, 17))

seeds = {
    "set_key_xts256": bytes([0]) + hdr(1, 140) + struct.pack("<I", 8) + blob(0, 3, 3, XTS256),
    "set_key_xts128_512": bytes([0]) + hdr(1, 140) + struct.pack("<I", 9) + blob(0, 0, 1, XTS128),
    "set_key_essiv": bytes([0]) + hdr(1, 140) + struct.pack("<I", 10) + blob(3, 3, 1, ESSIV),
    "set_key_ecb": bytes([1]) + hdr(1, 140) + struct.pack("<I", 11) + blob(2, 3, 3, bytes(range(1, 33))),
    "set_key_equal_halves": bytes([0]) + hdr(1, 140) + struct.pack("<I", 8) + blob(0, 3, 3, bytes(32) * 2),
    "set_key_tail": bytes([0]) + hdr(1, 140) + struct.pack("<I", 8) + blob(0, 3, 3, XTS256 + b"\x01", 64),
    "invalidate": bytes([0]) + hdr(2, 4) + struct.pack("<I", 0xFFFFFFFF),
    "query": bytes([0]) + hdr(3, 0),
    "huge_len": bytes([2]) + hdr(1, 0xFFFFFFFF),
    "bare_blob_xts256": bytes([2]) + hdr(3, 0) + blob(0, 3, 3, XTS256),
}

os.makedirs(DIR, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(DIR, name), "wb") as f:
        f.write(data)
