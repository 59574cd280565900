// Deterministic test data: the same (n, seed) always gives the same bytes, and
// different seeds give different bytes (so the two halves of an XTS key differ).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace iceblk::test {

inline std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

}  // namespace iceblk::test
