// Overflow-checked arithmetic for peer-controlled values (addresses, lengths,
// sectors, DUNs). Returns std::nullopt on overflow.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>

namespace iceblk {

template <typename T>
  requires std::is_unsigned_v<T>
[[nodiscard]] constexpr std::optional<T> checked_add(T a, T b) {
  T r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

template <typename T>
  requires std::is_unsigned_v<T>
[[nodiscard]] constexpr std::optional<T> checked_mul(T a, T b) {
  T r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// a << s, refusing shifts that lose bits.
[[nodiscard]] constexpr std::optional<uint64_t> checked_shl(uint64_t a, unsigned s) {
  if (s >= 64) return a == 0 ? std::optional<uint64_t>(0) : std::nullopt;
  if (s > 0 && (a >> (64 - s)) != 0) return std::nullopt;
  return a << s;
}

[[nodiscard]] constexpr bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace iceblk
