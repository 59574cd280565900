// Little-endian wire integers. Wire structs are plain, trivially copyable, built
// from these, with static_asserts on size/offsets at their definition.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace iceblk {

static_assert(std::endian::native == std::endian::little,
              "iceblk currently targets little-endian hosts (x86_64, aarch64)");

template <typename T>
class Le {
 public:
  constexpr Le() = default;
  constexpr Le(T v) : v_(v) {}  // NOLINT: implicit by design
  constexpr T get() const { return v_; }
  constexpr operator T() const { return v_; }  // NOLINT
 private:
  T v_{};
};

using le16 = Le<uint16_t>;
using le32 = Le<uint32_t>;
using le64 = Le<uint64_t>;
static_assert(sizeof(le16) == 2 && sizeof(le32) == 4 && sizeof(le64) == 8);

// Copy a trivially copyable object out of raw bytes (no aliasing of the source).
template <typename T>
T load_obj(const void* p) {
  T t;
  std::memcpy(&t, p, sizeof t);
  return t;
}

}  // namespace iceblk
