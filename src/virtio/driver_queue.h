// Driver side of a split virtqueue, in memory the driver owns (a memfd that the
// device maps). Used by the driver library and, in-process, by the device tests
// (the "ring simulator"): the same code on both paths.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "base/result.h"
#include "base/strong_types.h"
#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "virtio/split_queue.h"

namespace iceblk::virtio {

// One memfd-backed region of "guest" memory owned by the driver, with a simple
// thread-safe allocator (first fit over a free list, alignment honoured).
class DriverMemory {
 public:
  static Result<std::shared_ptr<DriverMemory>> create(uint64_t size, uint64_t guest_base = 0x100000);
  ~DriverMemory();

  [[nodiscard]] int fd() const;
  [[nodiscard]] uint64_t size() const;
  [[nodiscard]] uint64_t guest_base() const;
  // Host pointer for a guest address range; nullptr if outside.
  [[nodiscard]] uint8_t* ptr(GuestAddr a, uint64_t len = 1) const;

  Result<GuestAddr> alloc(uint64_t size, uint64_t align = 64);  // kBusy when full
  void free(GuestAddr a);

  // The region as the device would see it (for building a device-side GuestMemory
  // in-process: user_addr == guest address).
  [[nodiscard]] memory::Region region() const;

 private:
  DriverMemory() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A buffer of a descriptor chain.
struct Buffer {
  GuestAddr addr{0};
  uint32_t len = 0;
  bool device_writable = false;
};

struct UsedElem {
  uint16_t head;
  uint32_t len;
};

class DriverQueue {
 public:
  // Allocates desc/avail/used rings (and, when `indirect`, indirect tables on demand)
  // in `mem`. size: power of two.
  static Result<std::unique_ptr<DriverQueue>> create(std::shared_ptr<DriverMemory> mem, uint16_t size,
                                                     bool event_idx, bool indirect = false);
  ~DriverQueue();

  // Ring addresses for the device (SET_VRING_ADDR / SplitQueue::activate).
  [[nodiscard]] QueueConfig device_config() const;
  [[nodiscard]] uint16_t size() const;
  [[nodiscard]] uint16_t free_descriptors() const;

  // Place a chain (readable buffers must precede writable ones; not checked here so
  // tests can build bad chains). Uses an indirect table (allocated from the
  // DriverMemory, freed on completion) when `use_indirect`, which needs `indirect`
  // at create() (else kUnsupported). Returns the head. kBusy when not enough free
  // descriptors or memory; kInvalidArgument for an empty or over-long chain.
  // Thread-safe (all DriverQueue methods take an internal lock).
  Result<uint16_t> add(std::span<const Buffer> bufs, bool use_indirect = false);
  // Make added chains visible (ORDER: release store of avail->idx).
  void publish();
  // Whether the device wants a kick for the chains published since the last call
  // (EVENT_IDX avail_event, or !VIRTQ_USED_F_NO_NOTIFY).
  bool needs_kick();
  // Next completion, if any (ORDER: acquire load of used->idx). Frees its descriptors.
  std::optional<UsedElem> get_used();
  // Whether a completion is waiting (acquire load of used->idx).
  [[nodiscard]] bool has_used() const;
  // Ask for an interrupt at the next completion (EVENT_IDX: used_event = next used
  // index, kept up to date by get_used(); otherwise clears VIRTQ_AVAIL_F_NO_INTERRUPT).
  // Ends with a full fence: call has_used() afterwards before sleeping.
  void enable_interrupts();
  // Suppress interrupts (EVENT_IDX: stop advancing used_event; otherwise set
  // VIRTQ_AVAIL_F_NO_INTERRUPT).
  void disable_interrupts();

  // Test hook: before any add(), start every 16-bit ring index (avail/used idx and
  // the event fields) at `idx`, to exercise wrap-around. The device must then be
  // activated with next_avail = idx.
  void set_start_index(uint16_t idx);
  // Test hooks for malformed input: raw descriptor table and avail ring writes.
  // They bypass the free-descriptor list; completions of raw heads are returned by
  // get_used() without freeing anything. push_raw_avail needs publish().
  void write_raw_desc(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next);
  void push_raw_avail(uint16_t head);
  // Stores avail->idx directly (and makes it the driver's next avail index).
  void set_raw_avail_idx(uint16_t idx);

 private:
  DriverQueue() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace iceblk::virtio
