#include "ice/key_blob.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstring>

namespace iceblk::ice {

Result<Key> parse_key_blob(std::span<const uint8_t, kKeyBlobSize> blob,
                           const std::vector<Capability>& caps) {
  // TRUST: every byte of `blob` is caller-controlled. Only the 8 header bytes are
  // copied out; the key bytes are read in place.
  const uint8_t alg = blob[offsetof(KeyBlobWire, alg)];
  const uint8_t du_exp = blob[offsetof(KeyBlobWire, data_unit_size_exp)];
  const uint8_t key_size = blob[offsetof(KeyBlobWire, key_size)];
  const uint8_t key_type = blob[offsetof(KeyBlobWire, key_type)];
  const uint16_t key_len = load_obj<le16>(blob.data() + offsetof(KeyBlobWire, key_len));
  const uint16_t reserved = load_obj<le16>(blob.data() + offsetof(KeyBlobWire, reserved));
  const auto key_area = blob.subspan<offsetof(KeyBlobWire, key), kKeyBlobKeyBytes>();

  // Spec §6: the triple must be one the device advertises (else UNSUPP). Casting any
  // u8 to these enums is well defined (fixed underlying type); unknown values simply
  // match no capability.
  const Capability cap{static_cast<Algorithm>(alg), du_exp, static_cast<KeySize>(key_size)};
  if (std::find(caps.begin(), caps.end(), cap) == caps.end()) {
    return fail(Errc::kUnsupported,
                "key blob: (alg {}, data_unit_size_exp {}, key_size {}) is not an advertised "
                "capability",
                alg, du_exp, key_size);
  }
  if (key_type != 0) {
    return fail(Errc::kUnsupported, "key blob: key_type {} unsupported (only 0, raw keys)",
                key_type);
  }
  if (reserved != 0) {
    return fail(Errc::kInvalidArgument, "key blob: reserved field is {:#x}, must be 0", reserved);
  }
  auto need = key_length(cap.alg, cap.key_size);
  if (!need) return fail(Errc::kUnsupported, "key blob: {}", need.error().message);
  if (key_len != *need) {
    return fail(Errc::kInvalidArgument, "key blob: key_len {} but the algorithm needs {} bytes",
                key_len, *need);
  }
  uint8_t tail = 0;
  for (size_t i = key_len; i < kKeyBlobKeyBytes; ++i) tail |= key_area[i];
  if (tail != 0) {
    return fail(Errc::kInvalidArgument, "key blob: key bytes beyond key_len {} must be zero",
                key_len);
  }
  const auto material = key_area.first(key_len);
  if (cap.alg == Algorithm::kAesXts) {
    const size_t half = material.size() / 2;
    if (CRYPTO_memcmp(material.data(), material.data() + half, half) == 0) {
      return fail(Errc::kInvalidArgument, "key blob: the two XTS key halves are equal");
    }
  }
  auto key = Key::create(cap.mode(), material);
  if (!key) {
    const Errc code = key.error().code == Errc::kUnsupported ? Errc::kUnsupported
                                                              : Errc::kInvalidArgument;
    return fail(code, "key blob: {}", key.error().message);
  }
  return std::move(*key);
}

Status encode_key_blob(const CryptoMode& mode, std::span<const uint8_t> key,
                       std::span<uint8_t, kKeyBlobSize> out) {
  ICEBLK_TRY(validate_mode(mode));
  ICEBLK_ASSIGN_OR_RETURN(const size_t need, key_length(mode.alg, mode.key_size));
  ICEBLK_ASSIGN_OR_RETURN(const uint8_t du_exp, data_unit_size_exp(mode.data_unit_size));
  if (key.size() != need || need > kKeyBlobKeyBytes) {
    return fail(Errc::kInvalidArgument, "key is {} bytes, the mode needs {}", key.size(), need);
  }
  std::memset(out.data(), 0, out.size());
  out[offsetof(KeyBlobWire, alg)] = static_cast<uint8_t>(mode.alg);
  out[offsetof(KeyBlobWire, data_unit_size_exp)] = du_exp;
  out[offsetof(KeyBlobWire, key_size)] = static_cast<uint8_t>(mode.key_size);
  out[offsetof(KeyBlobWire, key_type)] = 0;
  const le16 len(static_cast<uint16_t>(need));
  std::memcpy(out.data() + offsetof(KeyBlobWire, key_len), &len, sizeof len);
  std::memcpy(out.data() + offsetof(KeyBlobWire, key), key.data(), key.size());
  return {};
}

}  // namespace iceblk::ice
