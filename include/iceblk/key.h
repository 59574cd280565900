// A validated, immutable crypto key: mode + secret material. Created only through
// Key::create, which checks the length for the algorithm and that XTS halves differ.
#pragma once

#include <span>

#include "iceblk/result.h"
#include "iceblk/secret_bytes.h"
#include "iceblk/crypto_mode.h"

namespace iceblk::ice {

class Key {
 public:
  static Result<Key> create(const CryptoMode& mode, std::span<const uint8_t> material);

  Key(Key&&) noexcept = default;
  Key& operator=(Key&&) noexcept = default;

  [[nodiscard]] const CryptoMode& mode() const { return mode_; }
  [[nodiscard]] std::span<const uint8_t> material() const { return material_.view(); }
  // ESSIV only: SHA-256(material), the AES-256 key that encrypts IVs.
  [[nodiscard]] std::span<const uint8_t> essiv_salt() const { return essiv_salt_.view(); }

 private:
  Key(CryptoMode m, SecretBytes material, SecretBytes salt)
      : mode_(m), material_(std::move(material)), essiv_salt_(std::move(salt)) {}
  CryptoMode mode_;
  SecretBytes material_;
  SecretBytes essiv_salt_;
};

}  // namespace iceblk::ice
