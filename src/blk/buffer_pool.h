// Bounded bounce-buffer memory for encrypted I/O (issue 14, part 2).
//
// A guest decides how many bytes of encrypted I/O it has in flight; the daemon's
// memory must not follow it. So the buffers are sized at queue set-up and never
// grow:
//  - per export: BlkDeviceConfig::max_buffer_memory bytes, split evenly over its
//    queues (iceblkd --max-buffer-memory / "max_buffer_memory");
//  - per engine (all exports of one daemon): a BufferBudget that every queue
//    reserves its share from when it starts (iceblkd --engine-buffer-memory /
//    "engine_buffer_memory"). A queue that cannot get one chunk's worth does not
//    start, with an error naming the option; it never takes more later.
// Each queue carves its share into fixed buffers (BouncePool). A request holds one
// buffer for all of its chunks (kCryptChunk at a time); when none is free it waits
// in FIFO order and resumes when one is released, never allocating.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "base/result.h"

namespace iceblk::blk {

inline constexpr uint64_t kCryptChunk = 256 * 1024;  // multiple of every data unit size
inline constexpr uint64_t kSmallBounce = 16 * 1024;  // buffers for requests up to 16 KiB
inline constexpr uint64_t kDefaultExportBufferMemory = uint64_t{4} << 20;
inline constexpr uint64_t kDefaultEngineBufferMemory = uint64_t{64} << 20;
// The least a queue can work with: one chunk.
inline constexpr uint64_t kMinQueueBufferMemory = kCryptChunk;

// Bytes of bounce buffers all queues of all exports may reserve together.
// Thread-safe (queues start on their own workers).
class BufferBudget {
 public:
  explicit BufferBudget(uint64_t cap) : cap_(cap) {}
  BufferBudget(const BufferBudget&) = delete;
  BufferBudget& operator=(const BufferBudget&) = delete;

  // Reserve min(want, what is left), which must be at least `min`; kBusy
  // (naming what is reserved and the cap) otherwise.
  Result<uint64_t> reserve(uint64_t want, uint64_t min);
  void release(uint64_t bytes);
  [[nodiscard]] uint64_t cap() const { return cap_; }
  [[nodiscard]] uint64_t reserved() const;

 private:
  const uint64_t cap_;
  mutable std::mutex mu_;
  uint64_t reserved_ = 0;
};

// One queue's bounce buffers: `bytes` of one anonymous mapping, cut into
// kSmallBounce buffers (at most one per ring entry, a quarter of the share) and
// kCryptChunk buffers (the rest, at least one). Pages are touched only when a
// buffer is used, so resident memory follows use up to the share, never beyond.
// Not thread-safe (owned by one queue worker).
class BouncePool {
 public:
  static Result<BouncePool> create(uint64_t bytes, uint16_t queue_size);
  BouncePool() = default;
  BouncePool(BouncePool&& o) noexcept;
  BouncePool& operator=(BouncePool&& o) noexcept;
  ~BouncePool();

  // A free buffer for a request of `length` bytes (small buffers for up to
  // kSmallBounce when the pool has them), or nullptr when that class has none free.
  // `small` tells the caller which class to give it back to.
  uint8_t* take(uint64_t length, bool& small);
  void give(uint8_t* b, bool small);
  // Whether a request of `length` bytes uses the small class.
  [[nodiscard]] bool uses_small(uint64_t length) const {
    return length <= kSmallBounce && small_count_ > 0;
  }

  [[nodiscard]] size_t small_count() const { return small_count_; }
  [[nodiscard]] size_t large_count() const { return large_count_; }
  [[nodiscard]] uint64_t bytes() const { return bytes_; }

 private:
  uint8_t* base_ = nullptr;
  uint64_t bytes_ = 0;
  size_t small_count_ = 0;
  size_t large_count_ = 0;
  std::vector<uint8_t*> small_free_;  // capacity fixed at create()
  std::vector<uint8_t*> large_free_;
};

}  // namespace iceblk::blk
