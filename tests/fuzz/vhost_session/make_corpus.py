#!/usr/bin/env python3
"""Seed inputs for fuzz_vhost_session (layout: the top of vhost_session_fuzz.cc):
whole front-end conversations, from negotiation through a started ring that the
harness fills with requests and kicks, to GET_VRING_BASE and reset."""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
GPA, UVA, MEM = 0x10000, 0x7F0000000000, 64 << 10
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000  # ring offsets in the memfd
F_VERSION1, F_EVENT_IDX, F_INDIRECT, F_PROTOCOL = 1 << 32, 1 << 29, 1 << 28, 1 << 30
PF = (1 << 0) | (1 << 3) | (1 << 9) | (1 << 13) | (1 << 15)  # MQ REPLY_ACK CONFIG RESET_DEVICE MEM_SLOTS

REQ = dict(GET_FEATURES=1, SET_FEATURES=2, SET_OWNER=3, RESET_OWNER=4, SET_MEM_TABLE=5, SET_VRING_NUM=8,
           SET_VRING_ADDR=9, SET_VRING_BASE=10, GET_VRING_BASE=11, SET_VRING_KICK=12, SET_VRING_CALL=13,
           SET_VRING_ERR=14, GET_PROTOCOL_FEATURES=15, SET_PROTOCOL_FEATURES=16, GET_QUEUE_NUM=17,
           SET_VRING_ENABLE=18, GET_CONFIG=24, SET_CONFIG=25, RESET_DEVICE=34, GET_MAX_MEM_SLOTS=36,
           ADD_MEM_REG=37, REM_MEM_REG=38, SET_STATUS=39, GET_STATUS=40)


def msg(name, payload=b"", nfds=0, kind=0, need_reply=False):
    return bytes([0, REQ[name], (kind << 4) | nfds, 1 if need_reply else 0]) + struct.pack("<H", len(payload)) + payload


def u64(v):
    return struct.pack("<Q", v)


def state(i, n):
    return struct.pack("<II", i, n)


def region(gpa=GPA, size=MEM, uva=UVA, off=0):
    return struct.pack("<QQQQ", gpa, size, uva, off)


def guest_write(off, data):
    return bytes([2]) + struct.pack("<H", off) + bytes([len(data)]) + data


def kick(q):
    return bytes([3, q])


def negotiate(pf=PF, features=F_VERSION1 | F_EVENT_IDX | F_PROTOCOL):
    return (msg("GET_FEATURES") + msg("SET_OWNER") + msg("GET_PROTOCOL_FEATURES") + msg("SET_PROTOCOL_FEATURES", u64(pf))
            + msg("SET_FEATURES", u64(features)) + msg("GET_QUEUE_NUM") + msg("GET_MAX_MEM_SLOTS"))


def mem_table(kind=1):
    return msg("SET_MEM_TABLE", struct.pack("<II", 1, 0) + region(), nfds=1, kind=kind, need_reply=True)


def ring(q, size=16, enable=True):
    base = q * 0x4000
    addr = struct.pack("<IIQQQQ", q, 0, UVA + DESC + base, UVA + USED + base, UVA + AVAIL + base, 0)
    s = (msg("SET_VRING_NUM", state(q, size)) + msg("SET_VRING_BASE", state(q, 0)) + msg("SET_VRING_ADDR", addr)
         + msg("SET_VRING_CALL", u64(q), nfds=1, kind=0) + msg("SET_VRING_KICK", u64(q), nfds=1, kind=0, need_reply=True))
    if enable:
        s += msg("SET_VRING_ENABLE", state(q, 1))
    return s


def request(q, head=0, readable=16, writable=16):
    base = q * 0x4000
    desc = (struct.pack("<QIHH", GPA + 0x8000 + base, readable, 1, 1)  # NEXT -> 1
            + struct.pack("<QIHH", GPA + 0x9000 + base, writable, 2, 0))  # WRITE
    avail = struct.pack("<HHH", 0, 1, head)
    return (guest_write(0x8000 + base, bytes(range(readable))) + guest_write(DESC + base + head * 16, desc)
            + guest_write(AVAIL + base, avail) + kick(q))


seeds = {
    "negotiate_only": bytes([0]) + negotiate(),
    "one_request_q0": bytes([0]) + negotiate() + mem_table() + ring(0) + request(0) + msg("GET_VRING_BASE", state(0, 0)),
    "two_queues": bytes([0]) + negotiate() + mem_table() + ring(0) + ring(1) + request(0) + request(1)
                  + msg("GET_VRING_BASE", state(1, 0)) + msg("RESET_DEVICE"),
    "deferred_status": bytes([3]) + negotiate(pf=PF | (1 << 16)) + msg("SET_STATUS", u64(0xF)) + mem_table()
                       + ring(0) + request(0) + msg("GET_STATUS") + msg("GET_VRING_BASE", state(0, 0)),
    "config": bytes([0]) + negotiate() + msg("GET_CONFIG", struct.pack("<III", 0, 64, 0) + bytes(64))
              + msg("SET_CONFIG", struct.pack("<III", 16, 4, 0) + b"abcd", need_reply=True),
    "mem_slots": bytes([4]) + negotiate() + msg("ADD_MEM_REG", u64(0) + region(), nfds=1, kind=2, need_reply=True)
                 + ring(0, enable=False) + msg("REM_MEM_REG", u64(0) + region(), nfds=1, kind=2),
    "no_protocol_features": bytes([0]) + msg("GET_FEATURES") + msg("SET_FEATURES", u64(F_VERSION1)) + mem_table()
                            + ring(0, enable=False) + request(0) + msg("RESET_OWNER"),
    "unsealed_refused": bytes([0]) + negotiate() + mem_table(kind=2) + ring(0),
    "small_file": bytes([0]) + negotiate() + mem_table(kind=3) + ring(0),
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
