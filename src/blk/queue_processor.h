// Per-queue request execution: pops chains from a SplitQueue, parses them
// (parse_request), runs them on the backend IoQueue and the ICE engine, and pushes
// completions. One QueueProcessor per virtqueue, owned and used by that queue's
// worker thread only (not thread-safe); queues share nothing but the backend file,
// the engine (thread-safe) and the device's read-mostly state.
//
// Data path:
//  - plain IN/OUT: zero-copy, the backend reads/writes guest buffers directly;
//  - encrypted OUT: encrypted straight from the guest's buffers into a private
//    bounce buffer, which is written (one pass over the data: the cipher is the
//    copy; ciphertext never lands in driver buffers, plaintext never on disk);
//  - encrypted IN: read into a bounce buffer, decrypted out of place straight into
//    the guest's buffers (they receive only the final plaintext).
//  Data units split across guest iovecs go through a small per-worker block
//  (ice::CryptContext::crypt, scatter/gather form). With crypto threads
//  (BlkDeviceConfig::crypt_pool), a chunk of at least ice::kParallelCryptMinBytes is
//  crypted in pieces by the worker and the idle pool threads together
//  (ice/crypt_pool.h); the worker waits for every piece before the chunk moves on.
//  Encrypted requests move in chunks of kCryptChunk bytes, one chunk in flight per
//  request, through the queue's fixed pool of bounce buffers (buffer_pool.h: sized
//  at set-up from the export's and the engine's caps, never grown). A request holds
//  one buffer for all its chunks; when none is free it waits (FIFO) and resumes when
//  one is released.
//  - at most queue_size requests are held: with every request state in use, further
//    chains stay in the available ring until one completes (a driver that re-posts
//    heads cannot make the device hold more).
//  - writethrough mode (BlkDevice::writeback() false): every OUT is followed by a
//    flush before it completes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "backend/block_backend.h"
#include "base/result.h"
#include "blk/buffer_pool.h"
#include "blk/completion_hold.h"
#include "blk/request.h"
#include "blk/stats.h"
#include "ice/engine.h"
#include "virtio/split_queue.h"

namespace iceblk::blk {

class BlkDevice;

class QueueProcessor {
 public:
  ~QueueProcessor();  // waits for backend I/O still in flight (no completion pushed)
  QueueProcessor(const QueueProcessor&) = delete;
  QueueProcessor& operator=(const QueueProcessor&) = delete;

  // Handle everything the queue has: reap backend completions, pop and run all
  // available chains, push used entries. With EVENT_IDX it re-enables
  // notifications and re-checks the ring before returning, so no kick is lost.
  // Also clears completion_fd(). Returns whether the driver must be notified
  // (call eventfd). An error means the ring itself is broken (SplitQueue::pop
  // kProtocol, or push_used failed): stop the queue.
  Result<bool> process(virtio::SplitQueue& q);

  // Readable when backend completions are waiting (-1 for synchronous backends,
  // which complete inside process()). Wake up and call process() on it.
  [[nodiscard]] int completion_fd() const;

  // Finish every in-flight request and push its completion (stop / GET_VRING_BASE).
  // Chains still in the available ring are left there.
  void drain(virtio::SplitQueue& q);

  // Encrypted requests that had to wait for a bounce buffer (since creation).
  [[nodiscard]] uint64_t buffer_waits() const { return buffer_waits_; }
  // This queue's bounce buffers (fixed at creation).
  [[nodiscard]] const BouncePool& buffers() const { return pool_; }
  // Requests popped and not yet completed (held completions included).
  [[nodiscard]] size_t in_flight() const { return in_flight_ + (hold_ ? hold_->held() : 0); }
  [[nodiscard]] uint16_t queue_index() const { return index_; }

 private:
  friend class BlkDevice;
  struct InFlight;

  // `reserved` bytes of `budget` (may be null) back `pool`; released on destruction.
  QueueProcessor(BlkDevice& dev, uint16_t index, std::unique_ptr<backend::IoQueue> io, BouncePool pool,
                 std::shared_ptr<BufferBudget> budget, uint64_t reserved);

  void handle_chain(const virtio::DescriptorChain& chain, virtio::SplitQueue& q);
  Result<bool> take_chain(virtio::SplitQueue& q);  // false: the ring is empty
  void start(InFlight* f, virtio::SplitQueue& q);
  void advance(InFlight* f, virtio::SplitQueue& q);
  void handle_ready(virtio::SplitQueue& q);
  void submit(InFlight* f, backend::IoRequest req);
  bool submit_crypt_chunk(InFlight* f);  // false: failed before anything was submitted
  void finish(InFlight* f, virtio::SplitQueue& q, uint8_t status, uint32_t used_len);
  void complete(virtio::SplitQueue& q, uint16_t head, uint32_t used_len);
  InFlight* acquire();  // nullptr when all queue_size states are in use
  void release_held(virtio::SplitQueue& q, bool all);  // fault injection (completion_hold.h)
  void release(InFlight* f);
  void start_crypt(InFlight* f, virtio::SplitQueue& q);
  // The one pass over a chunk: on crypt_ alone, or split across crypt_pool_.
  Status crypt_chunk(const Request& r, ice::Direction dir, uint64_t off, std::span<const iovec> src,
                     uint64_t src_off, std::span<const iovec> dst, uint64_t dst_off, uint64_t len);
  void resume_waiters(virtio::SplitQueue& q);

  BlkDevice& dev_;
  ParseEnv env_;
  ice::Engine* engine_;
  uint16_t index_;
  QueueStats* stats_;  // the device's counters of this queue
  ice::CryptContext crypt_;
  ice::CryptPool* crypt_pool_;  // the device's (null: none); outlives us with dev_
  // Sized at creation (queue_size of each); none grows afterwards.
  std::unique_ptr<InFlight[]> states_;
  std::vector<InFlight*> free_;   // states not in use
  std::vector<InFlight*> ready_;  // sub-operations all finished
  std::vector<InFlight*> batch_;
  // The chain being popped (SplitQueue::pop_into): queue_size segments per direction.
  virtio::DescriptorChain chain_;
  std::optional<Error> bad_chain_;
  BouncePool pool_;
  std::shared_ptr<BufferBudget> budget_;  // the engine's (null: no engine-wide cap)
  uint64_t reserved_ = 0;                 // bytes of budget_ behind pool_
  // Encrypted requests waiting for a buffer of their class, oldest first (fixed
  // capacity: ring buffers of queue_size entries).
  struct WaitQueue {
    std::vector<InFlight*> slots;
    size_t head = 0, count = 0;
    void push(InFlight* f) {
      slots[(head + count) % slots.size()] = f;
      ++count;
    }
    InFlight* pop() {
      InFlight* f = slots[head];
      head = (head + 1) % slots.size();
      --count;
      return f;
    }
  };
  WaitQueue small_waiters_, large_waiters_;
  uint64_t buffer_waits_ = 0;
  size_t in_flight_ = 0;
  size_t pushed_ = 0;
  std::optional<Error> ring_error_;
  std::optional<CompletionHold> hold_;    // TESTING ONLY: --test-reorder-completions
  std::unique_ptr<backend::IoQueue> io_;  // last: destroyed (and drained) first
};

}  // namespace iceblk::blk
