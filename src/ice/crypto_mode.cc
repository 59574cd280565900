#include "ice/crypto_mode.h"

#include <algorithm>
#include <array>
#include <cctype>

#include "base/checked.h"

namespace iceblk::ice {
namespace {

struct NamedMode {
  std::string_view name;
  Algorithm alg;
  KeySize ks;
  size_t key_len;
};

// Every (algorithm, key size) this engine implements (spec §4.1).
constexpr std::array<NamedMode, 5> kModes{{
    {"aes-128-xts", Algorithm::kAesXts, KeySize::k128, 32},
    {"aes-256-xts", Algorithm::kAesXts, KeySize::k256, 64},
    {"aes-128-cbc-essiv", Algorithm::kEssivAesCbc, KeySize::k128, 16},
    {"aes-128-ecb", Algorithm::kAesEcb, KeySize::k128, 16},
    {"aes-256-ecb", Algorithm::kAesEcb, KeySize::k256, 32},
}};

const NamedMode* find_mode(Algorithm alg, KeySize ks) {
  for (const auto& m : kModes) {
    if (m.alg == alg && m.ks == ks) return &m;
  }
  return nullptr;
}

}  // namespace

Result<size_t> key_length(Algorithm alg, KeySize ks) {
  const NamedMode* m = find_mode(alg, ks);
  if (m == nullptr) {
    return fail(Errc::kUnsupported, "unsupported crypto algorithm {}", algorithm_name(alg, ks));
  }
  return m->key_len;
}

Result<uint8_t> data_unit_size_exp(uint32_t data_unit_size) {
  if (data_unit_size < kMinDataUnitSize || data_unit_size > kMaxDataUnitSize ||
      !is_power_of_two(data_unit_size)) {
    return fail(Errc::kUnsupported,
                "unsupported data unit size {} (must be a power of two in {}..{})",
                data_unit_size, kMinDataUnitSize, kMaxDataUnitSize);
  }
  uint8_t exp = 0;
  while ((kMinDataUnitSize << exp) != data_unit_size) ++exp;
  return exp;
}

Status validate_mode(const CryptoMode& m) {
  ICEBLK_TRY(key_length(m.alg, m.key_size));
  ICEBLK_TRY(data_unit_size_exp(m.data_unit_size));
  return {};
}

Result<std::pair<Algorithm, KeySize>> parse_algorithm(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const auto& m : kModes) {
    if (m.name == lower) return std::pair{m.alg, m.ks};
  }
  return fail(Errc::kUnsupported,
              "unknown crypto algorithm '{}' (expected aes-128-xts, aes-256-xts, "
              "aes-128-cbc-essiv, aes-128-ecb or aes-256-ecb)",
              name);
}

std::string algorithm_name(Algorithm alg, KeySize ks) {
  if (const NamedMode* m = find_mode(alg, ks)) return std::string(m->name);
  std::string_view a;
  switch (alg) {
    case Algorithm::kAesXts: a = "aes-xts"; break;
    case Algorithm::kBitlockerAesCbc: a = "bitlocker-aes-cbc"; break;
    case Algorithm::kAesEcb: a = "aes-ecb"; break;
    case Algorithm::kEssivAesCbc: a = "aes-cbc-essiv"; break;
    default: return fmt::format("alg#{}/key-size#{}", static_cast<unsigned>(alg),
                                static_cast<unsigned>(ks));
  }
  std::string_view k;
  switch (ks) {
    case KeySize::k128: k = "128"; break;
    case KeySize::k192: k = "192"; break;
    case KeySize::k256: k = "256"; break;
    case KeySize::k512: k = "512"; break;
    default: return fmt::format("{}/key-size#{}", a, static_cast<unsigned>(ks));
  }
  return fmt::format("{}/{}", a, k);
}

std::vector<Capability> capabilities_for(const std::vector<std::pair<Algorithm, KeySize>>& algs,
                                         bool allow_ecb) {
  std::vector<Capability> caps;
  std::vector<std::pair<Algorithm, KeySize>> seen;
  for (const auto& [alg, ks] : algs) {
    if (find_mode(alg, ks) == nullptr) continue;  // not implemented: never advertised
    if (alg == Algorithm::kAesEcb && !allow_ecb) continue;
    if (std::find(seen.begin(), seen.end(), std::pair{alg, ks}) != seen.end()) continue;
    seen.emplace_back(alg, ks);
    for (uint8_t exp = 0; (kMinDataUnitSize << exp) <= kMaxDataUnitSize; ++exp) {
      caps.push_back(Capability{alg, exp, ks});
    }
  }
  return caps;
}

}  // namespace iceblk::ice
