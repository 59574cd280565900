// Per-queue request counters, read by the control socket's query-stats. Each
// QueueStats is written by its queue's worker thread only (single writer: relaxed
// load + store, no locked instruction on the data path) and read by any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "blk/request.h"

namespace iceblk::blk {

// Request types counted (RequestKind, plus requests refused before they had one).
inline constexpr size_t kStatKinds = 10;
inline constexpr size_t kStatInvalid = 9;  // malformed chain or header
std::string_view stat_kind_name(size_t kind);  // "read", "write", "flush", ...

// Completion statuses counted as errors.
inline constexpr size_t kStatErrIoErr = 0;   // VIRTIO_BLK_S_IOERR
inline constexpr size_t kStatErrUnsupp = 1;  // VIRTIO_BLK_S_UNSUPP
inline constexpr size_t kStatErrNoStatus = 2;  // chain completed without a status byte
inline constexpr size_t kStatErrors = 3;
std::string_view stat_error_name(size_t e);  // "ioerr", "unsupp", "no_status"

// Latency histogram: bucket i counts requests that took < kLatencyBoundsUs[i] us
// (the last bucket, +Inf, everything else). Not cumulative.
inline constexpr std::array<uint64_t, 16> kLatencyBoundsUs = {
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 10000000};
inline constexpr size_t kLatencyBuckets = kLatencyBoundsUs.size() + 1;

struct QueueStats {
  std::array<std::atomic<uint64_t>, kStatKinds> requests{};
  std::array<std::atomic<uint64_t>, kStatKinds> bytes{};
  std::array<std::atomic<uint64_t>, kStatErrors> errors{};
  std::atomic<uint64_t> bytes_encrypted{0};
  std::atomic<uint64_t> bytes_decrypted{0};
  std::atomic<uint64_t> requests_encrypted{0};  // encrypted writes that completed OK
  std::atomic<uint64_t> requests_decrypted{0};  // encrypted reads that completed OK
  std::array<std::atomic<uint64_t>, kLatencyBuckets> latency{};
  std::atomic<uint64_t> latency_sum_ns{0};

  static void bump(std::atomic<uint64_t>& a, uint64_t n = 1) {
    a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  // One completed request. `kind` < kStatKinds; status is the virtio status byte
  // (or 0xff: completed without one); latency_ns since the chain was popped.
  void record(size_t kind, uint64_t bytes_moved, uint8_t status, uint64_t latency_ns, bool encrypted, bool write);
};

}  // namespace iceblk::blk
