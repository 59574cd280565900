#include "blk/stats.h"

#include "blk/wire.h"

namespace iceblk::blk {

std::string_view stat_kind_name(size_t kind) {
  static constexpr std::array<std::string_view, kStatKinds> kNames = {
      "read", "write", "flush", "get_id", "discard", "write_zeroes", "get_crypto_caps", "program_key", "evict_key",
      "invalid"};
  return kind < kNames.size() ? kNames[kind] : "unknown";
}

std::string_view stat_error_name(size_t e) {
  static constexpr std::array<std::string_view, kStatErrors> kNames = {"ioerr", "unsupp", "no_status"};
  return e < kNames.size() ? kNames[e] : "unknown";
}

void QueueStats::record(size_t kind, uint64_t bytes_moved, uint8_t status, uint64_t latency_ns, bool encrypted,
                        bool write) {
  if (kind >= kStatKinds) kind = kStatInvalid;
  bump(requests[kind]);
  if (status == kStatusOk) {
    bump(bytes[kind], bytes_moved);
    if (encrypted) {
      bump(write ? bytes_encrypted : bytes_decrypted, bytes_moved);
      bump(write ? requests_encrypted : requests_decrypted);
    }
  } else if (status == kStatusIoErr) {
    bump(errors[kStatErrIoErr]);
  } else if (status == kStatusUnsupp) {
    bump(errors[kStatErrUnsupp]);
  } else {
    bump(errors[kStatErrNoStatus]);
  }
  const uint64_t us = latency_ns / 1000;
  size_t b = 0;
  while (b < kLatencyBoundsUs.size() && us >= kLatencyBoundsUs[b]) ++b;
  bump(latency[b]);
  bump(latency_sum_ns, latency_ns);
}

}  // namespace iceblk::blk
