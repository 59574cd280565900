#!/usr/bin/env python3
"""Seed inputs for fuzz_key_file: byte 0 = mode (0 AES-256-XTS, 1 AES-128-XTS,
2 AES-128-CBC-ESSIV, 3 AES-256-ECB), then the key file's contents."""
import os

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
os.makedirs(out, exist_ok=True)
seeds = {
    "raw_xts256": bytes([0]) + bytes(range(64)),
    "hex_xts256": bytes([0]) + (bytes(range(64)).hex() + "\n").encode(),
    "hex_spaced_xts128": bytes([1]) + " ".join(bytes(range(32)).hex()[i:i + 8] for i in range(0, 64, 8)).encode() + b"\r\n",
    "hex_upper_essiv128": bytes([2]) + bytes(range(32)).hex().upper().encode(),
    "short_hex": bytes([3]) + b"abcd\n",
    "not_hex": bytes([0]) + b"this is not a key\n",
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
