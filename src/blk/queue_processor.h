// Per-queue request execution: pops chains from a SplitQueue, parses them
// (parse_request), runs them on the backend IoQueue and the ICE engine, and pushes
// completions. One QueueProcessor per virtqueue, owned and used by that queue's
// worker thread only (not thread-safe); queues share nothing but the backend file,
// the engine (thread-safe) and the device's read-mostly state.
//
// Data path:
//  - plain IN/OUT: zero-copy, the backend reads/writes guest buffers directly;
//  - encrypted OUT: guest data is copied to a private bounce buffer, encrypted there
//    and written (ciphertext never lands in driver buffers, plaintext never on disk);
//  - encrypted IN: read into a bounce buffer, decrypt, copy to the guest.
//  Encrypted requests move in chunks of kCryptChunk bytes, one chunk in flight per
//  request, through a per-processor pool of bounce buffers (no allocation per data
//  unit or, in the steady state, per request).
//  - writethrough mode (BlkDevice::writeback() false): every OUT is followed by a
//    flush before it completes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "backend/block_backend.h"
#include "base/result.h"
#include "blk/completion_hold.h"
#include "blk/request.h"
#include "blk/stats.h"
#include "ice/engine.h"
#include "virtio/split_queue.h"

namespace iceblk::blk {

class BlkDevice;

inline constexpr uint64_t kCryptChunk = 256 * 1024;  // multiple of every data unit size

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

  // Requests popped and not yet completed (held completions included).
  [[nodiscard]] size_t in_flight() const { return in_flight_ + (hold_ ? hold_->held() : 0); }
  [[nodiscard]] uint16_t queue_index() const { return index_; }

 private:
  friend class BlkDevice;
  struct InFlight;

  QueueProcessor(BlkDevice& dev, uint16_t index, std::unique_ptr<backend::IoQueue> io);

  void handle_chain(const virtio::DescriptorChain& chain, virtio::SplitQueue& q);
  void start(InFlight* f, virtio::SplitQueue& q);
  void advance(InFlight* f, virtio::SplitQueue& q);
  void handle_ready(virtio::SplitQueue& q);
  void submit(InFlight* f, backend::IoRequest req);
  bool submit_crypt_chunk(InFlight* f);  // false: failed before anything was submitted
  void finish(InFlight* f, virtio::SplitQueue& q, uint8_t status, uint32_t used_len);
  void complete(virtio::SplitQueue& q, uint16_t head, uint32_t used_len);
  void release_held(virtio::SplitQueue& q, bool all);  // fault injection (completion_hold.h)
  InFlight* acquire();
  void release(InFlight* f);
  uint8_t* acquire_bounce(size_t size);
  void release_bounce(uint8_t* b, size_t size);

  BlkDevice& dev_;
  ParseEnv env_;
  ice::Engine* engine_;
  uint16_t index_;
  QueueStats* stats_;  // the device's counters of this queue
  ice::CryptContext crypt_;
  std::vector<std::unique_ptr<InFlight>> states_;  // every request state ever made (owner)
  std::vector<InFlight*> free_;                    // states not in use
  std::vector<InFlight*> ready_;                  // sub-operations all finished
  std::vector<InFlight*> batch_;
  std::vector<uint8_t*> bounce_free_;             // kCryptChunk bytes each, 4 KiB aligned
  std::vector<uint8_t*> small_bounce_free_;       // 16 KiB each, for requests up to 16 KiB
  size_t in_flight_ = 0;
  size_t pushed_ = 0;
  std::optional<Error> ring_error_;
  std::optional<CompletionHold> hold_;    // TESTING ONLY: --test-reorder-completions
  std::unique_ptr<backend::IoQueue> io_;  // last: destroyed (and drained) first
};

}  // namespace iceblk::blk
