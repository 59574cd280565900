#!/usr/bin/env python3
"""AES-XTS of a plaintext file as the ICE computes it (spec section 5): data unit i
uses the tweak le64(dun0 + i) || le64(0). Independent of iceblk's code (Python's
cryptography package over OpenSSL), so a test comparing the medium with it checks
the device against the spec, not against itself.
  xts_reference.py KEY_HEX_FILE DUN0 DATA_UNIT_SIZE PLAIN OUT"""
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

key = bytes.fromhex(open(sys.argv[1]).read().strip())
dun0, dus = int(sys.argv[2]), int(sys.argv[3])
plain = open(sys.argv[4], "rb").read()
assert len(plain) % dus == 0, "plaintext is not whole data units"
out = bytearray()
for i in range(len(plain) // dus):
    tweak = (dun0 + i).to_bytes(8, "little") + bytes(8)
    enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
    out += enc.update(plain[i * dus:(i + 1) * dus]) + enc.finalize()
open(sys.argv[5], "wb").write(out)
