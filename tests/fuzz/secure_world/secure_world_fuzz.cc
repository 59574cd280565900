// libFuzzer target for the secure world's two decoders of peer input (a trust
// boundary, docs/threat-model.md): the request header check
// (secure_world::check_request_header) and the key blob parser shared with in-band
// PROGRAM_KEY (ice::parse_key_blob).
//
// Input layout:
//   [0]      flags: bit0 the capability list includes AES-ECB (host opt-in),
//            bit1 advertise AES-256-XTS only (instead of every family)
//   [1..13)  a 12-byte request header (le32 magic, le16 op, le16 reserved, le32 len)
//   [13..)   payload bytes; the key blob is payload[4..140) when the header is a
//            SET_KEY header and payload[0..136) otherwise (when that many exist)
//
// Properties checked (__builtin_trap on violation), besides ASan/UBSan:
//   - the header check accepts exactly: magic "ICSW", reserved 0, a known op and
//     len == that op's payload size (<= kMaxPayloadLen); every refusal is kProtocol;
//   - a blob the parser accepts has an advertised mode, the right key length, and
//     re-encodes (encode_key_blob) to exactly the same 136 bytes: only canonical
//     blobs (reserved 0, zero tail) are accepted;
//   - every refusal is kUnsupported or kInvalidArgument (UNSUPPORTED / INVALID on
//     the wire), never anything else.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "ice/crypto_mode.h"
#include "ice/key.h"
#include "ice/key_blob.h"
#include "secure_world/wire.h"

namespace {

using namespace iceblk;
namespace sw = iceblk::secure_world;

const std::vector<ice::Capability>& caps(uint8_t flags) {
  static const auto* all = new std::vector<ice::Capability>(ice::capabilities_for(
      {{ice::Algorithm::kAesXts, ice::KeySize::k128},
       {ice::Algorithm::kAesXts, ice::KeySize::k256},
       {ice::Algorithm::kEssivAesCbc, ice::KeySize::k128}},
      false));
  static const auto* all_ecb = new std::vector<ice::Capability>(ice::capabilities_for(
      {{ice::Algorithm::kAesXts, ice::KeySize::k128},
       {ice::Algorithm::kAesXts, ice::KeySize::k256},
       {ice::Algorithm::kEssivAesCbc, ice::KeySize::k128},
       {ice::Algorithm::kAesEcb, ice::KeySize::k128},
       {ice::Algorithm::kAesEcb, ice::KeySize::k256}},
      true));
  static const auto* xts256 =
      new std::vector<ice::Capability>(ice::capabilities_for({{ice::Algorithm::kAesXts, ice::KeySize::k256}}, false));
  if (flags & 2) return *xts256;
  return (flags & 1) ? *all_ecb : *all;
}

void check_header(const sw::RequestHeader& h) {
  auto r = sw::check_request_header(h);
  const auto want = sw::request_payload_len(h.op.get());
  const bool valid = h.magic.get() == sw::kMagic && h.reserved.get() == 0 && want.has_value() &&
                     h.payload_len.get() == *want;
  if (r.has_value() != valid) __builtin_trap();
  if (r && (*r != *want || *r > sw::kMaxPayloadLen)) __builtin_trap();
  if (!r && r.error().code != Errc::kProtocol) __builtin_trap();
}

void check_blob(std::span<const uint8_t, ice::kKeyBlobSize> blob, const std::vector<ice::Capability>& cs) {
  auto k = ice::parse_key_blob(blob, cs);
  if (!k) {
    const Errc c = k.error().code;
    if (c != Errc::kUnsupported && c != Errc::kInvalidArgument) __builtin_trap();
    const auto st = sw::key_blob_status(k.error());
    if (st != (c == Errc::kUnsupported ? sw::WireStatus::kUnsupported : sw::WireStatus::kInvalid)) __builtin_trap();
    return;
  }
  const ice::CryptoMode m = k->mode();
  if (std::none_of(cs.begin(), cs.end(), [&](const ice::Capability& c) { return c.mode() == m; })) __builtin_trap();
  auto len = ice::key_length(m.alg, m.key_size);
  if (!len || *len != k->material().size()) __builtin_trap();
  std::array<uint8_t, ice::kKeyBlobSize> again{};
  if (!ice::encode_key_blob(m, k->material(), again)) __builtin_trap();
  if (std::memcmp(again.data(), blob.data(), again.size()) != 0) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 + sw::kHeaderSize) return 0;
  const uint8_t flags = data[0];
  const auto h = load_obj<sw::RequestHeader>(data + 1);
  check_header(h);
  const uint8_t* payload = data + 1 + sw::kHeaderSize;
  const size_t payload_len = size - 1 - sw::kHeaderSize;
  const size_t blob_off = h.op.get() == static_cast<uint16_t>(sw::Op::kSetKey) ? sizeof(sw::SlotPayload) : 0;
  if (payload_len >= blob_off + ice::kKeyBlobSize) {
    // Exactly 136 bytes (ASan catches any read past them), as in the service's buffer.
    std::array<uint8_t, ice::kKeyBlobSize> blob{};
    std::memcpy(blob.data(), payload + blob_off, blob.size());
    check_blob(blob, caps(flags));
  }
  return 0;
}
