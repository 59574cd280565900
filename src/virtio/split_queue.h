// Device side of a VIRTIO split virtqueue (VIRTIO 1.3 §2.7): pops descriptor chains
// from the available ring, pushes completions to the used ring, and decides whether
// the driver needs a notification (EVENT_IDX, §2.7.7-2.7.10).
//
// TRUST: rings and descriptors live in guest memory. The chain walker is bounded by
// the queue size and rejects: descriptor indexes >= queue size, loops, chains longer
// than the queue (or an indirect table longer than its own length / 16), a readable
// descriptor after a writable one, nested indirect tables, INDIRECT together with
// NEXT, indirect table lengths that are 0 or not a multiple of 16, total length
// overflow (more than UINT32_MAX bytes per direction), and any buffer outside
// guest memory. Indirect tables are limited to kMaxQueueSize entries and require
// VIRTIO_F_INDIRECT_DESC (QueueConfig::indirect).
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <variant>
#include <vector>

#include "base/result.h"
#include "base/strong_types.h"
#include "memory/guest_memory.h"
#include "virtio/inflight.h"

namespace iceblk::virtio {

inline constexpr uint16_t kMaxQueueSize = 32768;

// Ring addresses are guest-physical (already translated from front-end VAs).
struct QueueConfig {
  uint16_t size = 0;  // power of two, 1..32768
  GuestAddr desc{0};
  GuestAddr avail{0};
  GuestAddr used{0};
  bool event_idx = false;  // VIRTIO_F_EVENT_IDX negotiated
  bool indirect = true;    // VIRTIO_F_INDIRECT_DESC negotiated
};

// One buffer of a chain, already checked to lie in guest memory.
struct Segment {
  GuestAddr addr{0};
  uint32_t len = 0;
};

// A walked, validated descriptor chain: readable segments first, then writable.
struct DescriptorChain {
  uint16_t head = 0;
  std::vector<Segment> readable;
  std::vector<Segment> writable;
  uint64_t readable_len = 0;
  uint64_t writable_len = 0;
};

// A chain that failed validation: the device completes `head` with length 0
// (the driver gets its descriptors back) and logs the reason.
struct BadChain {
  uint16_t head;
  Error error;
};

class SplitQueue {
 public:
  // Validates size and that the three rings lie in guest memory with correct
  // alignment (desc 16, avail 2, used 4); each ring must be inside one region
  // (the EVENT_IDX fields are included only when negotiated). The used index
  // continues from used->idx in memory (vhost-user: only last_avail is restored).
  static Result<SplitQueue> activate(const QueueConfig& cfg,
                                     std::shared_ptr<const memory::GuestMemory> mem,
                                     uint16_t next_avail = 0);

  // vhost-user INFLIGHT_SHMFD (virtio/inflight.h): track every head in `tracker`'s
  // shared region from now on. A region left by a back-end that crashed is recovered
  // first: its inflight heads are returned by pop() before anything new, oldest
  // first, and next_avail becomes used->idx + their number (whatever the front-end
  // restored with SET_VRING_BASE). Call right after activate(). Returns how many
  // requests will be resubmitted.
  Result<size_t> attach_inflight(InflightQueue tracker);

  // Replace the memory snapshot (after a memory table change); re-resolves rings.
  Status set_memory(std::shared_ptr<const memory::GuestMemory> mem);

  // Next available chain. nullopt = ring empty. A returned BadChain must still be
  // completed with push_used(head, 0). Error (kProtocol) = the ring itself is
  // broken (avail idx more than `size` ahead, or an avail entry >= size): stop the queue.
  Result<std::optional<std::variant<DescriptorChain, BadChain>>> pop();

  // pop() into caller-owned storage: `chain` is cleared and refilled, so nothing is
  // allocated once its vectors have the capacity (the caller reserves queue size
  // entries per direction; a longer indirect table grows them once). kBad: `bad`
  // holds the reason and chain.head the head to complete with push_used(head, 0),
  // like a BadChain. The same Error (kProtocol) as pop() for a broken ring.
  enum class Popped { kEmpty, kChain, kBad };
  Result<Popped> pop_into(DescriptorChain& chain, std::optional<Error>& bad);

  // Publish one completion (ORDER: entry written before used->idx release).
  // kInvalidArgument if head >= size.
  Status push_used(uint16_t head, uint32_t written_len);

  // Whether the driver wants an interrupt for completions published since the last
  // call (EVENT_IDX used_event, or !VIRTQ_AVAIL_F_NO_INTERRUPT).
  bool should_notify();

  // EVENT_IDX: publish avail_event = next avail index so the driver kicks us only
  // when there is new work. Call before re-checking the ring and sleeping.
  // Without EVENT_IDX: clears VIRTQ_USED_F_NO_NOTIFY. Ends with a full fence.
  void enable_notifications();
  // While polling: ask the driver not to kick. Without EVENT_IDX sets
  // VIRTQ_USED_F_NO_NOTIFY; with EVENT_IDX publishes avail_event = next avail - 1, an
  // entry already consumed, so no new entry crosses it (§2.7.10). Undo with
  // enable_notifications() and re-check the ring before sleeping.
  void disable_notifications();

  // A bound on the chains one pass pops (the ring worker sets it to the queue size
  // before each pass). TRUST: a driver can keep its ring non-empty forever: a busy
  // guest, or rings that overlap so that the device's own used->idx stores publish
  // new avail entries. Without a bound one pass never returns, and the worker never
  // sees a stop (GET_VRING_BASE), a memory table change or the daemon's shutdown.
  // Once `pops` chains are popped, pop() reports kEmpty and budget_spent() is true
  // while chains remain: the worker then runs another pass after looking at its
  // control fds. Unlimited unless set.
  void set_pass_budget(uint32_t pops) {
    pass_budget_ = pops;
    budget_spent_ = false;
  }
  [[nodiscard]] bool budget_spent() const { return budget_spent_; }

  // Whether the driver has published a chain not yet popped (acquire load of
  // avail->idx; a corrupt index also counts: pop() then reports it).
  [[nodiscard]] bool has_available() const;

  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }
  [[nodiscard]] uint16_t size() const { return cfg_.size; }
  [[nodiscard]] const memory::GuestMemory& memory() const { return *mem_; }
  [[nodiscard]] std::shared_ptr<const memory::GuestMemory> memory_ptr() const { return mem_; }
  // A contained SIGBUS hit the guest memory or the inflight region of this queue
  // (memory/fault_guard.h): the front-end shrank them; the queue must stop.
  [[nodiscard]] bool poisoned() const {
    return mem_->poisoned() || (inflight_ && inflight_->poisoned());
  }

  SplitQueue(SplitQueue&&) noexcept = default;
  SplitQueue& operator=(SplitQueue&&) noexcept = default;

 private:
  SplitQueue() = default;
  Status resolve();
  Status walk(uint16_t head, DescriptorChain& chain);
  Popped walk_or_bad(uint16_t head, DescriptorChain& chain, std::optional<Error>& bad);

  QueueConfig cfg_;
  std::shared_ptr<const memory::GuestMemory> mem_;
  uint8_t* desc_ = nullptr;   // host pointers into guest memory; read with atomics/memcpy only
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  uint16_t next_avail_ = 0;
  uint16_t next_used_ = 0;
  uint16_t signalled_used_ = 0;
  bool signalled_used_valid_ = false;
  std::optional<InflightQueue> inflight_;
  std::vector<uint16_t> resubmit_;  // recovered heads, popped before the avail ring
  uint32_t pass_budget_ = ~uint32_t{0};  // chains this pass may still pop
  bool budget_spent_ = false;
  size_t resubmit_pos_ = 0;
  std::vector<uint8_t> indirect_;  // copy of the indirect table being walked (capacity kept)
};

}  // namespace iceblk::virtio
