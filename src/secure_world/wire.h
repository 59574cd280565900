// Wire protocol of the out-of-band key service ("secure world", spec §7). One unix
// stream socket per VM: the channel a message arrives on identifies the caller, and
// nothing inside a message names a VM. Full description: docs/secure-world.md.
//
// Every message is a fixed 12-byte little-endian header followed by payload_len
// bytes. Requests and responses share the layout; in a response the header's third
// field is the status instead of a reserved zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "base/le.h"
#include "base/result.h"
#include "ice/key_blob.h"

namespace iceblk::secure_world {

inline constexpr uint32_t kMagic = 0x57534349;  // "ICSW" as little-endian bytes

enum class Op : uint16_t {
  kSetKey = 1,         // payload: SetKeyPayload (140 bytes)
  kInvalidateKey = 2,  // payload: SlotPayload (4 bytes)
  kQueryRange = 3,     // payload: none; response payload: RangePayload (8 bytes)
};

enum class WireStatus : uint16_t {
  kOk = 0,
  kDenied = 1,       // the slot is outside the caller's range (spec §7)
  kInvalid = 2,      // malformed key blob or bad key (spec §6 IOERR cases)
  kUnsupported = 3,  // alg/du/key size triple not advertised, or key_type != 0
  kBadMessage = 4,   // framing error; the service closes the connection after replying
  kInternal = 5,     // the engine failed for a reason that is not the caller's fault
};

// Header of every request. `reserved` must be zero.
struct RequestHeader {
  le32 magic;
  le16 op;
  le16 reserved;
  le32 payload_len;
};
static_assert(sizeof(RequestHeader) == 12);

// Header of every response: the op it answers (echoed, even an unknown one), status.
struct ResponseHeader {
  le32 magic;
  le16 op;
  le16 status;
  le32 payload_len;
};
static_assert(sizeof(ResponseHeader) == 12);

inline constexpr size_t kHeaderSize = 12;

struct SlotPayload {
  le32 slot;  // physical slot
};
static_assert(sizeof(SlotPayload) == 4);

struct SetKeyPayload {
  le32 slot;  // physical slot
  ice::KeyBlobWire blob;  // spec §6, parsed by ice::parse_key_blob
};
static_assert(sizeof(SetKeyPayload) == 140 && offsetof(SetKeyPayload, blob) == 4);

struct RangePayload {
  le32 slot_offset;
  le32 max_slots;
};
static_assert(sizeof(RangePayload) == 8);

// Hard cap on payload_len in either direction: a header announcing more is a
// BAD_MESSAGE at once, before any payload byte is buffered.
inline constexpr uint32_t kMaxPayloadLen = 256;

// The exact request payload length of a known op, nullopt for an unknown op.
constexpr std::optional<uint32_t> request_payload_len(uint16_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kSetKey: return sizeof(SetKeyPayload);
    case Op::kInvalidateKey: return sizeof(SlotPayload);
    case Op::kQueryRange: return 0;
  }
  return std::nullopt;
}

constexpr std::string_view op_name(uint16_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kSetKey: return "SET_KEY";
    case Op::kInvalidateKey: return "INVALIDATE_KEY";
    case Op::kQueryRange: return "QUERY_RANGE";
  }
  return "UNKNOWN";
}

constexpr std::string_view status_name(WireStatus s) {
  switch (s) {
    case WireStatus::kOk: return "OK";
    case WireStatus::kDenied: return "DENIED";
    case WireStatus::kInvalid: return "INVALID";
    case WireStatus::kUnsupported: return "UNSUPPORTED";
    case WireStatus::kBadMessage: return "BAD_MESSAGE";
    case WireStatus::kInternal: return "INTERNAL";
  }
  return "UNKNOWN";
}

// The channel's message decoder (a trust boundary): checks a request header from a
// peer and returns the exact payload length to expect. Errc::kProtocol (the
// service answers BAD_MESSAGE and closes) for: wrong magic, reserved != 0,
// payload_len > kMaxPayloadLen, unknown op, payload_len != the op's size. Decided
// from the 12 header bytes alone, so no payload is buffered for a bad header.
Result<uint32_t> check_request_header(const RequestHeader& h);

// Map an ice::parse_key_blob error to the wire status of a SET_KEY reply:
// Errc::kUnsupported -> kUnsupported, anything else -> kInvalid.
WireStatus key_blob_status(const Error& e);

}  // namespace iceblk::secure_world
