// The 136-byte key blob of spec §6 (struct virtio_blk_ice_key): its wire layout and
// one parser shared by the out-of-band secure world (SET_KEY) and the in-band
// PROGRAM_KEY request (src/blk), so both paths apply exactly the same rules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "base/le.h"
#include "base/result.h"
#include "ice/crypto_mode.h"
#include "ice/key.h"

namespace iceblk::ice {

// struct virtio_blk_ice_key of spec §6, byte for byte.
inline constexpr size_t kKeyBlobSize = 136;
inline constexpr size_t kKeyBlobKeyBytes = 128;
struct KeyBlobWire {
  uint8_t alg;
  uint8_t data_unit_size_exp;
  uint8_t key_size;
  uint8_t key_type;  // 0 = raw key; 1 (hardware-wrapped) reserved
  le16 key_len;
  le16 reserved;
  uint8_t key[kKeyBlobKeyBytes];
};
static_assert(sizeof(KeyBlobWire) == kKeyBlobSize);
static_assert(offsetof(KeyBlobWire, key_type) == 3 && offsetof(KeyBlobWire, key_len) == 4 &&
              offsetof(KeyBlobWire, reserved) == 6 && offsetof(KeyBlobWire, key) == 8);

// Parse and validate a key blob against the advertised capabilities `caps`.
// The blob is read in place and never copied outside the returned Key (whose
// material is SecretBytes); the caller zeroises its own buffer afterwards.
//
// Checks (spec §6), in this order, and the error code each failure gets:
//   - (alg, data_unit_size_exp, key_size) is one of `caps`  else Errc::kUnsupported
//   - key_type == 0 (raw key)                                else Errc::kUnsupported
//   - reserved == 0                                          else Errc::kInvalidArgument
//   - key_len == the length the algorithm needs              else Errc::kInvalidArgument
//   - key[key_len..128) all zero ("unused tail zero")        else Errc::kInvalidArgument
//   - XTS: the two key halves differ                         else Errc::kInvalidArgument
//   - ice::Key::create accepts the material                  else its code (kUnsupported
//                                                            stays, anything else becomes
//                                                            kInvalidArgument)
// kUnsupported maps to VIRTIO_BLK_S_UNSUPP / secure_world::WireStatus::kUnsupported,
// and kInvalidArgument to VIRTIO_BLK_S_IOERR / secure_world::WireStatus::kInvalid
// (see secure_world::key_blob_status()). Error messages name fields and lengths,
// never key bytes.
Result<Key> parse_key_blob(std::span<const uint8_t, kKeyBlobSize> blob,
                           const std::vector<Capability>& caps);

// Build a blob for `mode` and raw `key` into `out` (fully overwritten; the unused
// tail is zero). Checks that the mode is valid and key.size() is what it needs
// (Errc::kUnsupported / kInvalidArgument); it does not check capabilities or XTS
// halves, which the receiver does. `out` holds key material: the caller zeroises it.
Status encode_key_blob(const CryptoMode& mode, std::span<const uint8_t> key,
                       std::span<uint8_t, kKeyBlobSize> out);

}  // namespace iceblk::ice
