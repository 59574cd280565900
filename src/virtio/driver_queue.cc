#include "virtio/driver_queue.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "base/checked.h"
#include "base/le.h"
#include "base/log.h"
#include "virtio/ring_atomics.h"
#include "virtio/ring_layout.h"

namespace iceblk::virtio {

// ---------------------------------------------------------------------------
// DriverQueue

struct DriverQueue::Impl {
  std::shared_ptr<DriverMemory> mem;
  uint16_t size = 0;
  bool event_idx = false;
  bool indirect = false;
  GuestAddr desc{0}, avail{0}, used{0};
  uint8_t* desc_p = nullptr;
  uint8_t* avail_p = nullptr;
  uint8_t* used_p = nullptr;

  std::mutex mu;
  // Free descriptors form a list through next_shadow (our own copy: the driver
  // never reads descriptor links back from shared memory).
  std::vector<uint16_t> next_shadow;
  uint16_t free_head = 0;
  uint16_t num_free = 0;
  std::vector<uint16_t> chain_len;          // per head; 0 = not in flight
  std::vector<std::optional<GuestAddr>> table;  // per head: indirect table to free
  uint16_t avail_idx = 0;      // next avail slot (shadow)
  uint16_t published_idx = 0;  // last value stored to avail->idx
  uint16_t kicked_idx = 0;     // published_idx at the last needs_kick()
  uint16_t last_used = 0;
  bool interrupts = true;

  void write_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) const {
    const VirtqDesc d{le64(addr), le32(len), le16(flags), le16(next)};
    std::memcpy(at, &d, sizeof d);
  }
  void put_avail(uint16_t head) {
    const auto slot = static_cast<uint16_t>(avail_idx & (size - 1));
    store16(avail_p + virtio::avail_ring_entry_off(slot), head, __ATOMIC_RELAXED);
    ++avail_idx;
  }
  void release_chain(uint16_t head) {
    const uint16_t n = chain_len[head];
    uint16_t last = head;
    for (uint16_t k = 1; k < n; ++k) last = next_shadow[last];
    next_shadow[last] = free_head;
    free_head = head;
    num_free = static_cast<uint16_t>(num_free + n);
    chain_len[head] = 0;
    if (table[head]) {
      mem->free(*table[head]);
      table[head].reset();
    }
  }
};

Result<std::unique_ptr<DriverQueue>> DriverQueue::create(std::shared_ptr<DriverMemory> mem, uint16_t size,
                                                         bool event_idx, bool indirect) {
  if (!mem) return fail(Errc::kInvalidArgument, "no driver memory");
  if (size == 0 || size > virtio::kMaxQueueSize || !is_power_of_two(size)) {
    return fail(Errc::kInvalidArgument, "queue size {} is not a power of two in 1..{}", size,
                virtio::kMaxQueueSize);
  }
  auto q = std::unique_ptr<DriverQueue>(new DriverQueue());
  q->impl_ = std::make_unique<Impl>();
  Impl& s = *q->impl_;
  s.mem = mem;
  s.size = size;
  s.event_idx = event_idx;
  s.indirect = indirect;
  // Allocated one by one; ~DriverQueue frees whatever was allocated.
  ICEBLK_ASSIGN_OR_RETURN(s.desc, mem->alloc(virtio::desc_table_bytes(size), 4096));
  ICEBLK_ASSIGN_OR_RETURN(s.avail, mem->alloc(virtio::avail_ring_bytes(size), 64));
  ICEBLK_ASSIGN_OR_RETURN(s.used, mem->alloc(virtio::used_ring_bytes(size), 4096));
  s.desc_p = mem->ptr(s.desc, virtio::desc_table_bytes(size));
  s.avail_p = mem->ptr(s.avail, virtio::avail_ring_bytes(size));
  s.used_p = mem->ptr(s.used, virtio::used_ring_bytes(size));
  std::memset(s.desc_p, 0, virtio::desc_table_bytes(size));
  std::memset(s.avail_p, 0, virtio::avail_ring_bytes(size));
  std::memset(s.used_p, 0, virtio::used_ring_bytes(size));
  s.next_shadow.resize(size);
  for (uint16_t i = 0; i < size; ++i) s.next_shadow[i] = static_cast<uint16_t>(i + 1);
  s.free_head = 0;
  s.num_free = size;
  s.chain_len.assign(size, 0);
  s.table.assign(size, std::nullopt);
  return q;
}

DriverQueue::~DriverQueue() {
  if (!impl_) return;
  Impl& s = *impl_;
  for (auto& t : s.table) {
    if (t) s.mem->free(*t);
  }
  if (s.desc.value) s.mem->free(s.desc);
  if (s.avail.value) s.mem->free(s.avail);
  if (s.used.value) s.mem->free(s.used);
}

virtio::QueueConfig DriverQueue::device_config() const {
  virtio::QueueConfig c;
  c.size = impl_->size;
  c.desc = impl_->desc;
  c.avail = impl_->avail;
  c.used = impl_->used;
  c.event_idx = impl_->event_idx;
  c.indirect = impl_->indirect;
  return c;
}

uint16_t DriverQueue::size() const { return impl_->size; }

uint16_t DriverQueue::free_descriptors() const {
  std::lock_guard lock(impl_->mu);
  return impl_->num_free;
}

Result<uint16_t> DriverQueue::add(std::span<const Buffer> bufs, bool use_indirect) {
  Impl& s = *impl_;
  if (bufs.empty()) return fail(Errc::kInvalidArgument, "empty descriptor chain");
  if (use_indirect && !s.indirect) return fail(Errc::kUnsupported, "indirect descriptors not enabled");
  const size_t limit = use_indirect ? virtio::kMaxQueueSize : s.size;
  if (bufs.size() > limit) {
    return fail(Errc::kInvalidArgument, "chain of {} buffers exceeds {}", bufs.size(), limit);
  }
  const auto n = static_cast<uint16_t>(bufs.size());
  std::optional<GuestAddr> table;
  if (use_indirect) {
    // Allocated outside the queue lock (DriverMemory has its own).
    ICEBLK_ASSIGN_OR_RETURN(table, s.mem->alloc(uint64_t{16} * n, 16));
    uint8_t* t = s.mem->ptr(*table, uint64_t{16} * n);
    for (uint16_t k = 0; k < n; ++k) {
      const auto& b = bufs[k];
      const uint16_t flags = static_cast<uint16_t>((b.device_writable ? virtio::kDescFWrite : 0) |
                                                   (k + 1 < n ? virtio::kDescFNext : 0));
      s.write_desc(t + uint64_t{16} * k, b.addr.value, b.len, flags, static_cast<uint16_t>(k + 1));
    }
  }
  std::lock_guard lock(s.mu);
  const uint16_t need = use_indirect ? 1 : n;
  if (need > s.num_free) {
    if (table) s.mem->free(*table);
    return fail(Errc::kBusy, "{} descriptors needed, {} free", need, s.num_free);
  }
  const uint16_t head = s.free_head;
  uint16_t i = head;
  if (use_indirect) {
    s.write_desc(s.desc_p + uint64_t{16} * i, table->value, uint32_t{16} * n, virtio::kDescFIndirect, 0);
    i = s.next_shadow[i];
  } else {
    for (uint16_t k = 0; k < n; ++k) {
      const auto& b = bufs[k];
      const uint16_t flags = static_cast<uint16_t>((b.device_writable ? virtio::kDescFWrite : 0) |
                                                   (k + 1 < n ? virtio::kDescFNext : 0));
      s.write_desc(s.desc_p + uint64_t{16} * i, b.addr.value, b.len, flags, s.next_shadow[i]);
      i = s.next_shadow[i];
    }
  }
  s.free_head = i;
  s.num_free = static_cast<uint16_t>(s.num_free - need);
  s.chain_len[head] = need;
  s.table[head] = table;
  s.put_avail(head);
  return head;
}

void DriverQueue::publish() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  // ORDER: release: descriptors and avail ring entries before the new avail->idx.
  store16(s.avail_p + virtio::kRingIdxOff, s.avail_idx, __ATOMIC_RELEASE);
  s.published_idx = s.avail_idx;
}

bool DriverQueue::needs_kick() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  // ORDER: full fence between storing avail->idx and reading avail_event/flags;
  // pairs with the device's fence in enable_notifications().
  full_fence();
  const uint16_t old = s.kicked_idx;
  const uint16_t now = s.published_idx;
  s.kicked_idx = now;
  if (old == now) return false;
  if (s.event_idx) {
    const uint16_t ev = load16(s.used_p + virtio::used_avail_event_off(s.size), __ATOMIC_RELAXED);
    return virtio::vring_need_event(ev, now, old);
  }
  return (load16(s.used_p + virtio::kRingFlagsOff, __ATOMIC_RELAXED) & virtio::kUsedFNoNotify) == 0;
}

std::optional<UsedElem> DriverQueue::get_used() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  // ORDER: acquire pairs with the device's release store of used->idx.
  const uint16_t used_idx = load16(s.used_p + virtio::kRingIdxOff, __ATOMIC_ACQUIRE);
  if (used_idx == s.last_used) return std::nullopt;
  const auto slot = static_cast<uint16_t>(s.last_used & (s.size - 1));
  const auto e = load_obj<VirtqUsedElem>(s.used_p + virtio::used_ring_entry_off(slot));
  ++s.last_used;
  if (s.event_idx && s.interrupts) {
    // Ask for an interrupt at the next completion; fence as in enable_interrupts().
    store16(s.avail_p + virtio::avail_used_event_off(s.size), s.last_used, __ATOMIC_RELAXED);
    full_fence();
  }
  const UsedElem out{static_cast<uint16_t>(e.id.get()), e.len.get()};
  // The device is not trusted either: only free chains that are in flight.
  if (e.id.get() < s.size && s.chain_len[e.id.get()] != 0) {
    s.release_chain(static_cast<uint16_t>(e.id.get()));
  } else {
    spdlog::debug("used ring returned head {} that is not in flight", e.id.get());
  }
  return out;
}

bool DriverQueue::has_used() const {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  return load16(s.used_p + virtio::kRingIdxOff, __ATOMIC_ACQUIRE) != s.last_used;
}

void DriverQueue::enable_interrupts() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  s.interrupts = true;
  if (s.event_idx) {
    store16(s.avail_p + virtio::avail_used_event_off(s.size), s.last_used, __ATOMIC_RELAXED);
  } else {
    store16(s.avail_p + virtio::kRingFlagsOff, 0, __ATOMIC_RELAXED);
  }
  // ORDER: full fence between publishing used_event/flags and the caller's
  // re-check of used->idx (has_used/get_used); pairs with the device's fence in
  // should_notify().
  full_fence();
}

void DriverQueue::disable_interrupts() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  s.interrupts = false;
  // With EVENT_IDX, leaving used_event stale suppresses interrupts (§2.7.10).
  if (!s.event_idx) store16(s.avail_p + virtio::kRingFlagsOff, virtio::kAvailFNoInterrupt, __ATOMIC_RELAXED);
}

void DriverQueue::set_start_index(uint16_t idx) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  s.avail_idx = s.published_idx = s.kicked_idx = s.last_used = idx;
  store16(s.avail_p + virtio::kRingIdxOff, idx, __ATOMIC_RELEASE);
  store16(s.used_p + virtio::kRingIdxOff, idx, __ATOMIC_RELEASE);
  store16(s.avail_p + virtio::avail_used_event_off(s.size), idx, __ATOMIC_RELEASE);
  store16(s.used_p + virtio::used_avail_event_off(s.size), idx, __ATOMIC_RELEASE);
}

void DriverQueue::write_raw_desc(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  if (index >= s.size) return;
  s.write_desc(s.desc_p + uint64_t{16} * index, addr, len, flags, next);
}

void DriverQueue::push_raw_avail(uint16_t head) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  s.put_avail(head);
}

void DriverQueue::set_raw_avail_idx(uint16_t idx) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  s.avail_idx = idx;
  s.published_idx = idx;
  store16(s.avail_p + virtio::kRingIdxOff, idx, __ATOMIC_RELEASE);
}

}  // namespace iceblk::virtio
