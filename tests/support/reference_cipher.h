// Reference ciphers for tests: OpenSSL EVP used directly, independent of iceblk's
// engine (src/ice), so that ciphertext on the medium can be checked against it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace iceblk::test {

// AES-XTS (128 or 256 by key length: 32 or 64 bytes) over data units of `dus` bytes;
// data unit i uses the tweak le64(dun0 + i) || le64(0) (spec §5). `in.size()` must
// be a multiple of `dus`. Failures are reported as gtest failures.
std::vector<uint8_t> reference_xts(std::span<const uint8_t> key, uint64_t dun0, std::span<const uint8_t> in,
                                   size_t dus, bool encrypt = true);

}  // namespace iceblk::test
