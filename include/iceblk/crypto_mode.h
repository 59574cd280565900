// Algorithms, key sizes, data unit sizes and capabilities (spec §4.1). Ids are the
// UFSHCI crypto capability ids used on the wire.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "iceblk/result.h"

namespace iceblk::ice {

enum class Algorithm : uint8_t {
  kAesXts = 0,
  kBitlockerAesCbc = 1,  // never advertised; programming it gets UNSUPP
  kAesEcb = 2,           // advertised only when the host opts in (leaks equal blocks)
  kEssivAesCbc = 3,      // AES-128-CBC-ESSIV (fscrypt)
};

enum class KeySize : uint8_t { kInvalid = 0, k128 = 1, k192 = 2, k256 = 3, k512 = 4 };

enum class Direction { kEncrypt, kDecrypt };

inline constexpr uint32_t kMinDataUnitSize = 512;
inline constexpr uint32_t kMaxDataUnitSize = 65536;  // 512 << 7

// A fully specified cipher mode: what a key is programmed with.
struct CryptoMode {
  Algorithm alg = Algorithm::kAesXts;
  KeySize key_size = KeySize::k256;
  uint32_t data_unit_size = 4096;  // bytes, 512 << exp with exp in 0..7
  bool operator==(const CryptoMode&) const = default;
};

// One advertised (alg, data unit size exponent, key size) triple, wire form of §4.1.
struct Capability {
  Algorithm alg;
  uint8_t data_unit_size_exp;
  KeySize key_size;
  bool operator==(const Capability&) const = default;
  [[nodiscard]] CryptoMode mode() const {
    return {alg, key_size, kMinDataUnitSize << data_unit_size_exp};
  }
};

// Key material length (bytes) the mode needs: XTS = 2 x AES key; ESSIV/ECB = AES key.
// kUnsupported for combinations this engine does not implement.
Result<size_t> key_length(Algorithm alg, KeySize ks);

// Validates alg/key size/data unit size (512..65536, power of two). kUnsupported otherwise.
Status validate_mode(const CryptoMode& m);

// Data unit size exponent for a valid size (512 -> 0 ... 65536 -> 7).
Result<uint8_t> data_unit_size_exp(uint32_t data_unit_size);

// Parse "aes-256-xts", "aes-128-xts", "aes-128-cbc-essiv", "aes-256-ecb", ...
Result<std::pair<Algorithm, KeySize>> parse_algorithm(std::string_view name);
std::string algorithm_name(Algorithm alg, KeySize ks);

// The engine's capabilities for the given algorithm families, every data unit size
// 512..65536 (8 entries per (alg, key size)). ECB entries only if `allow_ecb`.
std::vector<Capability> capabilities_for(const std::vector<std::pair<Algorithm, KeySize>>& algs,
                                         bool allow_ecb);

}  // namespace iceblk::ice
