// Helpers shared by the ice unit tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ice/engine.h"
#include "ice/key.h"

#include "support/pattern.h"

namespace iceblk::ice::test {

inline std::vector<uint8_t> from_hex(std::string_view hex) {
  std::vector<uint8_t> out;
  auto nib = [](char c) -> uint8_t {
    if (c >= '0' && c <= '9') return static_cast<uint8_t>(c - '0');
    if (c >= 'a' && c <= 'f') return static_cast<uint8_t>(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return static_cast<uint8_t>(c - 'A' + 10);
    ADD_FAILURE() << "bad hex digit " << c;
    return 0;
  };
  EXPECT_EQ(hex.size() % 2, 0u);
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(nib(hex[i]) << 4 | nib(hex[i + 1])));
  }
  return out;
}

inline std::string to_hex(std::span<const uint8_t> b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  for (uint8_t v : b) {
    s.push_back(kDigits[v >> 4]);
    s.push_back(kDigits[v & 15]);
  }
  return s;
}

// Deterministic bytes (support/pattern.h); XTS halves differ for any seed.
inline std::vector<uint8_t> pattern(size_t n, uint8_t seed) { return iceblk::test::pattern(n, seed); }

// Bytes 00..ff repeated: the IEEE 1619 plaintext of vectors 4 and 10.
inline std::vector<uint8_t> counting(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i);
  return v;
}

inline Key make_key(const CryptoMode& m, std::span<const uint8_t> material) {
  auto k = Key::create(m, material);
  if (!k) {
    ADD_FAILURE() << k.error().to_string();
    std::abort();  // test bug: no valid key to continue with
  }
  return std::move(*k);
}

// A key of the right length for `m`, derived from `seed`.
inline Key make_key(const CryptoMode& m, uint8_t seed) {
  auto len = key_length(m.alg, m.key_size);
  if (!len) {
    ADD_FAILURE() << len.error().to_string();
    std::abort();
  }
  auto bytes = pattern(*len, seed);
  return make_key(m, bytes);
}

// Every mode the engine implements, at data unit size `dus`.
inline std::vector<CryptoMode> all_modes(uint32_t dus) {
  return {
      {Algorithm::kAesXts, KeySize::k128, dus},
      {Algorithm::kAesXts, KeySize::k256, dus},
      {Algorithm::kEssivAesCbc, KeySize::k128, dus},
      {Algorithm::kAesEcb, KeySize::k128, dus},
      {Algorithm::kAesEcb, KeySize::k256, dus},
  };
}

}  // namespace iceblk::ice::test
