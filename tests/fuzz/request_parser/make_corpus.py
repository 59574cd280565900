#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_request_parser (see request_parser_fuzz.cc for the
input layout): a few small valid requests. Run from anywhere; writes ./corpus/."""
import os
import struct

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def hdr(t, sector, ice, slot=0, activate=0, dun=0):
    h = struct.pack("<IIQ", t, 0, sector)
    if ice:
        h += struct.pack("<BBHIQ", slot, activate, 0, 0, dun)
    return h


def seed(flags, readable, writable_lens):
    """readable: list of byte strings; writable_lens: list of lengths."""
    img = b"".join(readable)
    segs, off = [], 0
    for r in readable:
        segs.append((off, len(r)))
        off += len(r)
    for n in writable_lens:
        segs.append((off, n))
        off += n
    img += b"\xa5" * sum(writable_lens)
    out = bytes([flags, len(readable), len(writable_lens), 0])
    out += b"".join(struct.pack("<HH", o, n) for o, n in segs)
    return out + img


def key_blob(alg, exp, ks, key):
    return struct.pack("<BBBBHH", alg, exp, ks, 0, len(key), 0) + key + bytes(128 - len(key))


seeds = {
    "plain_out": seed(0, [hdr(1, 8, False), bytes(range(256)) * 2], [1]),
    "plain_in_split_hdr": seed(0, [hdr(0, 8, False)[:5], hdr(0, 8, False)[5:]], [512, 1]),
    "flush": seed(0, [hdr(4, 0, False)], [1]),
    "get_id": seed(0, [hdr(8, 0, False)], [20, 1]),
    "discard": seed(4, [hdr(11, 0, False), struct.pack("<QII", 0, 8, 0)], [1]),
    "write_zeroes_unmap": seed(4, [hdr(13, 0, False), struct.pack("<QII", 8, 8, 1) * 2], [1]),
    "ice_caps": seed(1, [hdr(28, 0, True)], [256, 1]),
    "ice_encrypted_out": seed(1, [hdr(1, 8, True, slot=8, activate=1, dun=5), bytes(4096)], [1]),
    "ice_encrypted_in_inband": seed(3, [hdr(0, 0, True, slot=1, activate=1, dun=9)], [1024, 1]),
    "ice_program_key": seed(3, [hdr(29, 0, True, slot=2), key_blob(0, 3, 3, bytes(range(1, 65)))], [1]),
    "ice_evict_key": seed(3, [hdr(31, 0, True, slot=2)], [1]),
}

os.makedirs(DIR, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(DIR, name), "wb") as f:
        f.write(data)
