#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_chain_walker (see chain_walker_fuzz.cc for the
input layout): a few small, valid rings. Run from anywhere; writes ./corpus/."""
import os
import struct

BASE = 0x10000
DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
NEXT, WRITE, INDIRECT = 1, 2, 4


def layout(size):
    avail = 16 * size
    used = (avail + 4 + 2 * size + 2 + 3) & ~3
    end = used + 4 + 8 * size + 2
    return avail, used, end


def ring(log2size, flags, next_avail, chains, split=0, pattern=0xFFFF, data_len=256,
         extra=None):
    """chains: list of (head, [(desc_index, addr_off, len, flags, next)]), data at the end."""
    size = 1 << log2size
    avail, used, end = layout(size)
    data_off = (end + 15) & ~15
    img = bytearray(data_off + data_len)
    for _, descs in chains:
        for (i, off, ln, fl, nx) in descs:
            struct.pack_into("<QIHH", img, 16 * i, BASE + data_off + off, ln, fl, nx)
    idx = next_avail
    for head, _ in chains:
        struct.pack_into("<H", img, avail + 4 + 2 * (idx % size), head)
        idx = (idx + 1) & 0xFFFF
    struct.pack_into("<H", img, avail + 2, idx)
    struct.pack_into("<H", img, used + 2, next_avail)
    for i in range(data_len):
        img[data_off + i] = i & 0xFF
    if extra:
        extra(img, data_off)
    hdr = struct.pack("<BBHHH", log2size, flags, next_avail, split, pattern)
    return hdr + bytes(img)


def indirect_table(img, data_off):
    # Table of 3 descriptors at data offset 128: readable 16, writable 32, writable 1.
    t = data_off + 128
    struct.pack_into("<QIHH", img, t, BASE + data_off, 16, NEXT, 1)
    struct.pack_into("<QIHH", img, t + 16, BASE + data_off + 16, 32, NEXT | WRITE, 2)
    struct.pack_into("<QIHH", img, t + 32, BASE + data_off + 48, 1, WRITE, 0)


seeds = {
    "simple_rw": ring(2, 0, 0, [(0, [(0, 0, 16, NEXT, 1), (1, 16, 64, WRITE, 0)])]),
    "three_chains": ring(3, 0, 0, [
        (0, [(0, 0, 16, NEXT, 1), (1, 16, 16, NEXT | WRITE, 2), (2, 32, 1, WRITE, 0)]),
        (3, [(3, 40, 8, 0, 0)]),
        (4, [(4, 48, 4, WRITE, 0)]),
    ], pattern=0x5555),
    "indirect": ring(2, 2, 0, [(0, [(0, 128, 48, INDIRECT, 0)])], extra=indirect_table),
    "event_idx_wrap": ring(2, 1, 65534, [
        (1, [(1, 0, 8, NEXT, 2), (2, 8, 8, WRITE, 0)]),
        (0, [(0, 16, 8, 0, 0)]),
        (3, [(3, 24, 8, WRITE, 0)]),
    ]),
    "split_regions": ring(2, 4, 0, [(0, [(0, 0, 200, NEXT, 1), (1, 200, 50, WRITE, 0)])],
                          split=0x100),
    # Region 2 starts at image offset 0xc0 but 4 KiB higher in guest space: the
    # second buffer (image offset 208) falls into the gap (a BadChain).
    "split_gap": ring(2, 4 | 8, 0, [(0, [(0, 0, 16, NEXT, 1), (1, 80, 16, WRITE, 0)]),
                                    (2, [(2, 32, 16, 0, 0)])], split=0xc0),
}

os.makedirs(DIR, exist_ok=True)
for name, blob in seeds.items():
    with open(os.path.join(DIR, name), "wb") as f:
        f.write(blob)
print(f"wrote {len(seeds)} seeds to {DIR}")
