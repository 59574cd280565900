// Inflight I/O tracking for split rings (vhost-user VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
// QEMU docs/interop/vhost-user.rst "Inflight I/O tracking"): a shared memory region
// that survives a back-end crash because the front-end keeps it and hands it back
// (SET_INFLIGHT_FD) to the restarted back-end.
//
// Per queue, in native byte order, the layout QEMU's back-ends (libvhost-user, DPDK)
// use:
//   header: u64 features; u16 version (1; 0 = not yet initialised); u16 desc_num;
//           u16 last_batch_head; u16 used_idx;
//   desc[desc_num]: u8 inflight; u8 padding[5]; u16 next; u64 counter;
// and each queue's part is inflight_queue_bytes(queue_size) bytes (64-byte aligned).
//
// The protocol, per descriptor head:
//   pop:      desc[head].counter = counter++; desc[head].inflight = 1
//   complete: last_batch_head = head; (used elem; used->idx++); desc[head].inflight = 0;
//             used_idx = used->idx
//   restart:  if used_idx != used->idx the crash hit between the two halves of a
//             completion: desc[last_batch_head].inflight = 0, used_idx = used->idx.
//             Resubmit every inflight head in counter order; the next avail entry to
//             pop is used->idx + (number inflight).
//
// TRUST: the region is shared with the front-end, which can write it at any time.
// It is read only in recover(), once, into private copies; every value read there is
// checked (desc_num must equal the ring size, last_batch_head < size, inflight flags
// are 0/1); afterwards the device only writes it. The session maps it only if the
// file is sealed against shrinking (a truncated region would SIGBUS the daemon).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/result.h"
#include "memory/guest_memory.h"

namespace iceblk::virtio {

struct InflightQueueHeader {
  uint64_t features;
  uint16_t version;
  uint16_t desc_num;
  uint16_t last_batch_head;
  uint16_t used_idx;
};
static_assert(sizeof(InflightQueueHeader) == 16);
static_assert(offsetof(InflightQueueHeader, version) == 8 &&
              offsetof(InflightQueueHeader, desc_num) == 10 &&
              offsetof(InflightQueueHeader, last_batch_head) == 12 &&
              offsetof(InflightQueueHeader, used_idx) == 14);

struct InflightDescState {
  uint8_t inflight;
  uint8_t padding[5];
  uint16_t next;
  uint64_t counter;
};
static_assert(sizeof(InflightDescState) == 16);
static_assert(offsetof(InflightDescState, next) == 6 && offsetof(InflightDescState, counter) == 8);

inline constexpr uint16_t kInflightVersion = 1;
inline constexpr uint64_t kInflightAlign = 64;

// Bytes of one queue's part of the region.
inline constexpr uint64_t inflight_queue_bytes(uint16_t queue_size) {
  const uint64_t raw =
      sizeof(InflightQueueHeader) + sizeof(InflightDescState) * uint64_t{queue_size};
  return (raw + kInflightAlign - 1) / kInflightAlign * kInflightAlign;
}

// The device-side tracker of one queue. Used by SplitQueue on its worker thread.
class InflightQueue {
 public:
  // `region`: inflight_queue_bytes(size) bytes (8-byte aligned), kept alive by `owner`.
  // `mapping` (may be null; kept alive by `owner` too) is the peer's file it lies in:
  // poisoned() reports a contained SIGBUS on it (memory/fault_guard.h).
  InflightQueue(uint8_t* region, uint16_t size, std::shared_ptr<const void> owner,
                const memory::Mapping* mapping = nullptr)
      : base_(region), size_(size), owner_(std::move(owner)), mapping_(mapping) {}

  [[nodiscard]] bool poisoned() const { return mapping_ != nullptr && mapping_->poisoned(); }

  struct Recovery {
    std::vector<uint16_t> resubmit;  // heads still in flight, oldest (lowest counter) first
    uint16_t next_avail = 0;         // used_idx + resubmit.size(): next avail entry to pop
    bool fresh = false;              // the region was new (version 0): nothing recovered
  };
  // At ring start; `used_idx` is used->idx read from the ring. A fresh region is
  // initialised (version, desc_num). kInvalidArgument if the region describes a
  // ring of another size.
  Result<Recovery> recover(uint16_t used_idx);

  // ORDER (all stores are atomic, in program order, so that whatever a crash leaves
  // behind is one of the states recover() understands):
  void mark(uint16_t head);                              // after pop, before the request runs
  void before_publish(uint16_t head);                    // before the used->idx store
  void after_publish(uint16_t head, uint16_t used_idx);  // after the used->idx store

 private:
  [[nodiscard]] InflightQueueHeader* header() const {
    return reinterpret_cast<InflightQueueHeader*>(base_);
  }
  [[nodiscard]] InflightDescState* desc(uint16_t i) const {
    return reinterpret_cast<InflightDescState*>(base_ + sizeof(InflightQueueHeader)) + i;
  }

  uint8_t* base_;
  uint16_t size_;
  std::shared_ptr<const void> owner_;
  const memory::Mapping* mapping_;
  uint64_t counter_ = 0;
};

}  // namespace iceblk::virtio
