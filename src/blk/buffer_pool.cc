#include "blk/buffer_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace iceblk::blk {

Result<uint64_t> BufferBudget::reserve(uint64_t want, uint64_t min) {
  std::lock_guard lock(mu_);
  const uint64_t left = cap_ - reserved_;
  const uint64_t got = std::min(want, left);
  if (got < min) {
    return fail(
        Errc::kBusy,
        "engine buffer memory exhausted: {} of {} bytes are reserved by running queues, a queue "
        "needs "
        "at least {} (raise --engine-buffer-memory / engine_buffer_memory, or lower the exports' "
        "--max-buffer-memory)",
        reserved_, cap_, min);
  }
  reserved_ += got;
  return got;
}

void BufferBudget::release(uint64_t bytes) {
  std::lock_guard lock(mu_);
  reserved_ -= std::min(bytes, reserved_);
}

uint64_t BufferBudget::reserved() const {
  std::lock_guard lock(mu_);
  return reserved_;
}

Result<BouncePool> BouncePool::create(uint64_t bytes, uint16_t queue_size) {
  if (bytes < kMinQueueBufferMemory) {
    return fail(Errc::kInvalidArgument, "a queue needs at least {} bytes of buffer memory, not {}",
                kMinQueueBufferMemory, bytes);
  }
  BouncePool p;
  // Small buffers serve the common 4 KiB case at full queue depth without tying up
  // a chunk each; large ones serve everything else, one chunk at a time.
  const uint64_t small_share = std::min<uint64_t>(uint64_t{queue_size} * kSmallBounce, bytes / 4);
  p.small_count_ = static_cast<size_t>(small_share / kSmallBounce);
  p.large_count_ = static_cast<size_t>((bytes - p.small_count_ * kSmallBounce) / kCryptChunk);
  if (p.large_count_ == 0) {  // keep the one chunk a large request needs
    p.large_count_ = 1;
    p.small_count_ = static_cast<size_t>((bytes - kCryptChunk) / kSmallBounce);
  }
  p.bytes_ = p.large_count_ * kCryptChunk + p.small_count_ * kSmallBounce;
  void* m = ::mmap(nullptr, p.bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    return fail(errno_error(Errc::kBusy,
                            fmt::format("mmap of {} bytes of bounce buffers", p.bytes_), errno));
  }
  p.base_ = static_cast<uint8_t*>(m);
  p.large_free_.reserve(p.large_count_);
  p.small_free_.reserve(p.small_count_);
  // Handed out from the front of the mapping first (reverse push, pop from back).
  for (size_t i = p.large_count_; i-- > 0;) p.large_free_.push_back(p.base_ + i * kCryptChunk);
  uint8_t* small_base = p.base_ + p.large_count_ * kCryptChunk;
  for (size_t i = p.small_count_; i-- > 0;) p.small_free_.push_back(small_base + i * kSmallBounce);
  return p;
}

BouncePool::BouncePool(BouncePool&& o) noexcept {
  *this = std::move(o);
}

BouncePool& BouncePool::operator=(BouncePool&& o) noexcept {
  if (this != &o) {
    if (base_ != nullptr) ::munmap(base_, bytes_);
    base_ = std::exchange(o.base_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    small_count_ = std::exchange(o.small_count_, 0);
    large_count_ = std::exchange(o.large_count_, 0);
    small_free_ = std::move(o.small_free_);
    large_free_ = std::move(o.large_free_);
  }
  return *this;
}

BouncePool::~BouncePool() {
  // Buffers held plaintext or ciphertext of guest data: the mapping goes back to the
  // kernel, which zeroes pages before anyone else gets them.
  if (base_ != nullptr) ::munmap(base_, bytes_);
}

uint8_t* BouncePool::take(uint64_t length, bool& small) {
  small = uses_small(length);
  auto& free = small ? small_free_ : large_free_;
  if (free.empty()) return nullptr;
  uint8_t* b = free.back();
  free.pop_back();
  return b;
}

void BouncePool::give(uint8_t* b, bool small) {
  (small ? small_free_ : large_free_).push_back(b);  // within reserved capacity
}

}  // namespace iceblk::blk
