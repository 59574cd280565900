#include "ice/key.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <array>

#include "base/secret_bytes.h"

namespace iceblk::ice {

Result<Key> Key::create(const CryptoMode& mode, std::span<const uint8_t> material) {
  ICEBLK_TRY(validate_mode(mode));
  ICEBLK_ASSIGN_OR_RETURN(const size_t need, key_length(mode.alg, mode.key_size));
  // Messages name lengths and modes only, never key bytes.
  if (material.size() != need) {
    return fail(Errc::kInvalidArgument, "key length {} does not match {} (needs {} bytes)",
                material.size(), algorithm_name(mode.alg, mode.key_size), need);
  }
  if (mode.alg == Algorithm::kAesXts) {
    // XTS with Key1 == Key2 degenerates (IEEE 1619 / FIPS 140 IG C.I); OpenSSL refuses
    // it on encrypt only, so check here for both directions with a clear error.
    const size_t half = material.size() / 2;
    if (CRYPTO_memcmp(material.data(), material.data() + half, half) == 0) {
      return fail(Errc::kInvalidArgument, "{} key halves are equal",
                  algorithm_name(mode.alg, mode.key_size));
    }
  }
  SecretBytes salt;
  if (mode.alg == Algorithm::kEssivAesCbc) {
    // ESSIV salt = SHA-256(key): the AES-256 key that encrypts each IV (spec §5.4).
    std::array<uint8_t, 32> digest{};
    unsigned int len = 0;
    // Fetched once, outside the scope below: OpenSSL's one-time set-up stays out of
    // the key arena; only the digest state (which holds the key) goes there.
    static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (sha256 == nullptr) return fail(Errc::kCrypto, "OpenSSL does not provide SHA-256");
    SecretAllocScope in_key_arena;
    const int ok = EVP_Digest(material.data(), material.size(), digest.data(), &len, sha256, nullptr);
    if (ok != 1 || len != digest.size()) {
      OPENSSL_cleanse(digest.data(), digest.size());
      return fail(Errc::kCrypto, "SHA-256 of the ESSIV key failed");
    }
    salt = SecretBytes(std::span<const uint8_t>(digest));
    OPENSSL_cleanse(digest.data(), digest.size());
  }
  return Key(mode, SecretBytes(material), std::move(salt));
}

}  // namespace iceblk::ice
