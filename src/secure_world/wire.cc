#include "secure_world/wire.h"

namespace iceblk::secure_world {

Result<uint32_t> check_request_header(const RequestHeader& h) {
  if (h.magic != kMagic) return fail(Errc::kProtocol, "bad magic {:#010x}", h.magic.get());
  if (h.reserved != 0) return fail(Errc::kProtocol, "reserved header field is not zero");
  if (h.payload_len > kMaxPayloadLen) {
    return fail(Errc::kProtocol, "payload_len {} exceeds the cap {}", h.payload_len.get(),
                kMaxPayloadLen);
  }
  const auto want = request_payload_len(h.op);
  if (!want) return fail(Errc::kProtocol, "unknown op {}", h.op.get());
  if (h.payload_len != *want) {
    return fail(Errc::kProtocol, "payload_len {} but {} takes {}", h.payload_len.get(),
                op_name(h.op), *want);
  }
  return *want;
}

WireStatus key_blob_status(const Error& e) {
  return e.code == Errc::kUnsupported ? WireStatus::kUnsupported : WireStatus::kInvalid;
}

}  // namespace iceblk::secure_world
