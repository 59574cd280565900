#include "virtio/split_queue.h"

#include <atomic>
#include <cstring>

#include "base/checked.h"
#include "base/le.h"
#include "virtio/ring_atomics.h"
#include "virtio/ring_layout.h"

namespace iceblk::virtio {

namespace {

// Ring indexes and flags are shared with the driver, which runs concurrently:
// they are accessed with atomic builtins on the (naturally aligned, checked in
// resolve()) host address. Ring entries and descriptors are copied with memcpy
// after the acquire load of the index that published them.

// Per-direction byte limit of a chain: the used length is a le32.
constexpr uint64_t kMaxChainBytes = UINT32_MAX;

// One buffer descriptor (not INDIRECT) appended to `chain`.
Status add_segment(const memory::GuestMemory& mem, const VirtqDesc& d, bool& seen_writable,
                   DescriptorChain& chain) {
  const bool writable = (d.flags.get() & kDescFWrite) != 0;
  // §2.7.4.2: device-readable descriptors precede device-writable ones.
  if (!writable && seen_writable) {
    return fail(Errc::kProtocol, "device-readable descriptor after a device-writable one");
  }
  seen_writable = seen_writable || writable;
  const GuestAddr addr{d.addr.get()};
  const uint32_t len = d.len.get();
  // TRUST: the buffer must lie entirely in guest memory.
  if (auto st = mem.check(addr, len); !st) {
    return fail(st.error().code, "descriptor buffer: {}", st.error().message);
  }
  uint64_t& total = writable ? chain.writable_len : chain.readable_len;
  auto sum = checked_add<uint64_t>(total, len);
  if (!sum || *sum > kMaxChainBytes) {
    return fail(Errc::kOverflow, "chain {} length exceeds {} bytes", writable ? "writable" : "readable",
                kMaxChainBytes);
  }
  total = *sum;
  (writable ? chain.writable : chain.readable).push_back(Segment{addr, len});
  return {};
}

// §2.7.5.3: an indirect descriptor table. Walked inside its own bounds.
Status walk_indirect(const memory::GuestMemory& mem, const VirtqDesc& ind, bool& seen_writable,
                     DescriptorChain& chain, std::vector<uint8_t>& scratch) {
  const uint32_t len = ind.len.get();
  if (len == 0) return fail(Errc::kInvalidArgument, "indirect descriptor table of length 0");
  if (len % sizeof(VirtqDesc) != 0) {
    return fail(Errc::kMisaligned, "indirect table length {} is not a multiple of 16", len);
  }
  const uint32_t n = len / static_cast<uint32_t>(sizeof(VirtqDesc));
  if (n > kMaxQueueSize) {
    return fail(Errc::kOutOfRange, "indirect table of {} descriptors exceeds {}", n, kMaxQueueSize);
  }
  // TRUST: copy the whole table once (no double fetch); read() checks the range.
  // The queue's scratch buffer keeps its capacity: no allocation per request.
  scratch.resize(len);
  if (auto st = mem.read(GuestAddr{ind.addr.get()}, {scratch.data(), size_t{len}}); !st) {
    return fail(st.error().code, "indirect table: {}", st.error().message);
  }
  uint32_t i = 0;
  for (uint32_t count = 1;; ++count) {
    // Bounded: a table of n entries yields at most n descriptors; more is a loop.
    if (count > n) return fail(Errc::kProtocol, "indirect chain longer than its table ({}): loop", n);
    VirtqDesc d;
    std::memcpy(&d, scratch.data() + size_t{i} * sizeof(VirtqDesc), sizeof d);
    const uint16_t flags = d.flags.get();
    // §2.7.5.3.1: the device MUST NOT accept an INDIRECT descriptor inside a table.
    if (flags & kDescFIndirect) return fail(Errc::kProtocol, "nested indirect descriptor table");
    ICEBLK_TRY(add_segment(mem, d, seen_writable, chain));
    if (!(flags & kDescFNext)) break;
    i = d.next.get();
    if (i >= n) return fail(Errc::kOutOfRange, "indirect next index {} >= table size {}", i, n);
  }
  return {};
}

}  // namespace

Result<SplitQueue> SplitQueue::activate(const QueueConfig& cfg,
                                        std::shared_ptr<const memory::GuestMemory> mem,
                                        uint16_t next_avail) {
  if (cfg.size == 0 || cfg.size > kMaxQueueSize || !is_power_of_two(cfg.size)) {
    return fail(Errc::kInvalidArgument, "queue size {} is not a power of two in 1..{}", cfg.size,
                kMaxQueueSize);
  }
  // §2.7: alignment of the three rings.
  if (cfg.desc.value % kDescAlign != 0 || cfg.avail.value % kAvailAlign != 0 ||
      cfg.used.value % kUsedAlign != 0) {
    return fail(Errc::kMisaligned, "ring addresses desc {:#x} avail {:#x} used {:#x} misaligned",
                cfg.desc.value, cfg.avail.value, cfg.used.value);
  }
  SplitQueue q;
  q.cfg_ = cfg;
  q.next_avail_ = next_avail;
  ICEBLK_TRY(q.set_memory(std::move(mem)));
  // The used index continues from what is in memory (vhost-user reconnect: the
  // front-end restores last_avail via SET_VRING_BASE; used->idx is in the ring).
  q.next_used_ = load16(q.used_ + kRingIdxOff, __ATOMIC_ACQUIRE);
  q.signalled_used_ = q.next_used_;
  q.signalled_used_valid_ = true;
  return q;
}

Result<size_t> SplitQueue::attach_inflight(InflightQueue tracker) {
  const uint16_t used_idx = load16(used_ + kRingIdxOff, __ATOMIC_ACQUIRE);
  ICEBLK_ASSIGN_OR_RETURN(auto rec, tracker.recover(used_idx));
  if (!rec.fresh) {
    // Everything popped before the crash is either in the used ring or still marked
    // inflight, so the avail ring continues after both (libvhost-user does the same).
    next_avail_ = rec.next_avail;
    resubmit_ = std::move(rec.resubmit);
    resubmit_pos_ = 0;
  }
  inflight_.emplace(std::move(tracker));
  return resubmit_.size();
}

Status SplitQueue::set_memory(std::shared_ptr<const memory::GuestMemory> mem) {
  if (!mem) return fail(Errc::kInvalidArgument, "no guest memory");
  const uint64_t ev = cfg_.event_idx ? 2 : 0;
  // TRUST: each ring must lie inside one region, so it can be accessed directly.
  ICEBLK_ASSIGN_OR_RETURN(uint8_t * desc, mem->contiguous(cfg_.desc, desc_table_bytes(cfg_.size)));
  ICEBLK_ASSIGN_OR_RETURN(uint8_t * avail,
                          mem->contiguous(cfg_.avail, avail_used_event_off(cfg_.size) + ev));
  ICEBLK_ASSIGN_OR_RETURN(uint8_t * used,
                          mem->contiguous(cfg_.used, used_avail_event_off(cfg_.size) + ev));
  // Atomic accesses need natural alignment of the host address too.
  if (reinterpret_cast<uintptr_t>(avail) % kAvailAlign != 0 ||
      reinterpret_cast<uintptr_t>(used) % kUsedAlign != 0) {
    return fail(Errc::kMisaligned, "ring host mapping is misaligned");
  }
  mem_ = std::move(mem);
  desc_ = desc;
  avail_ = avail;
  used_ = used;
  signalled_used_valid_ = false;  // be conservative: next should_notify() says yes
  return {};
}

Status SplitQueue::walk(uint16_t head, DescriptorChain& chain) {
  chain.head = head;
  chain.readable.clear();
  chain.writable.clear();
  chain.readable_len = chain.writable_len = 0;
  bool seen_writable = false;
  uint16_t idx = head;
  for (uint32_t count = 1;; ++count) {
    if (idx >= cfg_.size) {
      return fail(Errc::kOutOfRange, "descriptor index {} >= queue size {}", idx, cfg_.size);
    }
    // §2.7.5.2: a chain is never longer than the queue; a longer walk is a loop.
    if (count > cfg_.size) {
      return fail(Errc::kProtocol, "descriptor chain longer than queue size {}: loop", cfg_.size);
    }
    // TRUST: copy the descriptor once; all checks use the copy.
    const auto d = load_obj<VirtqDesc>(desc_ + desc_table_bytes(idx));
    const uint16_t flags = d.flags.get();
    if (flags & kDescFIndirect) {
      if (!cfg_.indirect) return fail(Errc::kProtocol, "INDIRECT descriptor but INDIRECT_DESC not negotiated");
      // §2.7.5.3.1: INDIRECT and NEXT together are not allowed.
      if (flags & kDescFNext) return fail(Errc::kProtocol, "descriptor has both INDIRECT and NEXT");
      // The WRITE flag of the indirect descriptor itself is ignored (§2.7.5.3.2).
      ICEBLK_TRY(walk_indirect(*mem_, d, seen_writable, chain, indirect_));
      break;
    }
    ICEBLK_TRY(add_segment(*mem_, d, seen_writable, chain));
    if (!(flags & kDescFNext)) break;
    idx = d.next.get();
  }
  return {};
}

Result<std::optional<std::variant<DescriptorChain, BadChain>>> SplitQueue::pop() {
  using Out = std::optional<std::variant<DescriptorChain, BadChain>>;
  DescriptorChain chain;
  std::optional<Error> bad;
  ICEBLK_ASSIGN_OR_RETURN(const Popped p, pop_into(chain, bad));
  switch (p) {
    case Popped::kEmpty: return Out{};
    case Popped::kBad: return Out{BadChain{chain.head, std::move(*bad)}};
    case Popped::kChain: break;
  }
  return Out{std::move(chain)};
}

Result<SplitQueue::Popped> SplitQueue::pop_into(DescriptorChain& chain, std::optional<Error>& bad) {
  bad.reset();
  if (pass_budget_ == 0) {
    budget_spent_ = budget_spent_ || resubmit_pos_ < resubmit_.size() || has_available();
    return Popped::kEmpty;
  }
  if (resubmit_pos_ < resubmit_.size()) {
    --pass_budget_;
    // Recovered after a restart: already marked inflight (keeps its counter).
    const uint16_t head = resubmit_[resubmit_pos_++];
    if (resubmit_pos_ == resubmit_.size()) {
      resubmit_.clear();
      resubmit_pos_ = 0;
    }
    return walk_or_bad(head, chain, bad);
  }
  // ORDER: acquire pairs with the driver's release store of avail->idx: the ring
  // entries and descriptors read below are at least as new as this index.
  const uint16_t avail_idx = load16(avail_ + kRingIdxOff, __ATOMIC_ACQUIRE);
  const auto pending = static_cast<uint16_t>(avail_idx - next_avail_);
  if (pending == 0) return Popped::kEmpty;
  // TRUST: §2.7.13.3: the driver can have at most `size` chains outstanding.
  if (pending > cfg_.size) {
    return fail(Errc::kProtocol, "avail idx {} is {} ahead of next {} (queue size {})", avail_idx,
                pending, next_avail_, cfg_.size);
  }
  const auto slot = static_cast<uint16_t>(next_avail_ & (cfg_.size - 1));
  const uint16_t head = load16(avail_ + avail_ring_entry_off(slot), __ATOMIC_RELAXED);
  if (head >= cfg_.size) {
    // No valid head to complete: the ring itself is broken.
    return fail(Errc::kProtocol, "avail ring entry {} >= queue size {}", head, cfg_.size);
  }
  ++next_avail_;
  --pass_budget_;
  // ORDER: marked before the request runs, so a crash from here on resubmits it.
  if (inflight_) inflight_->mark(head);
  return walk_or_bad(head, chain, bad);
}

SplitQueue::Popped SplitQueue::walk_or_bad(uint16_t head, DescriptorChain& chain, std::optional<Error>& bad) {
  if (auto st = walk(head, chain); !st) {
    chain.head = head;
    bad = std::move(st).error();
    return Popped::kBad;
  }
  return Popped::kChain;
}

Status SplitQueue::push_used(uint16_t head, uint32_t written_len) {
  if (head >= cfg_.size) {
    return fail(Errc::kInvalidArgument, "used head {} >= queue size {}", head, cfg_.size);
  }
  const auto slot = static_cast<uint16_t>(next_used_ & (cfg_.size - 1));
  // ORDER (inflight tracking): last_batch_head is stored before used->idx, and the
  // inflight flag is cleared after it, so a crash between the two is repaired by
  // InflightQueue::recover() (used_idx in the region lags used->idx).
  if (inflight_) inflight_->before_publish(head);
  const VirtqUsedElem e{le32(head), le32(written_len)};
  std::memcpy(used_ + used_ring_entry_off(slot), &e, sizeof e);
  ++next_used_;
  // ORDER: release: the used element (and the buffer contents written before this
  // call) are visible to the driver before the new used->idx.
  store16(used_ + kRingIdxOff, next_used_, __ATOMIC_RELEASE);
  if (inflight_) inflight_->after_publish(head, next_used_);
  return {};
}

bool SplitQueue::should_notify() {
  // ORDER: full fence between our used->idx store and reading used_event/flags.
  // Pairs with the driver's fence between writing used_event (or clearing
  // NO_INTERRUPT) and re-reading used->idx; without it both sides can miss each
  // other's store and the interrupt is lost (§2.7.10).
  full_fence();
  const uint16_t old = signalled_used_;
  const bool valid = signalled_used_valid_;
  signalled_used_ = next_used_;
  signalled_used_valid_ = true;
  if (valid && old == next_used_) return false;  // nothing published since last time
  if (cfg_.event_idx) {
    if (!valid) return true;
    // TRUST: any value is acceptable; it only decides whether to interrupt.
    const uint16_t used_event = load16(avail_ + avail_used_event_off(cfg_.size), __ATOMIC_RELAXED);
    return vring_need_event(used_event, next_used_, old);
  }
  return (load16(avail_ + kRingFlagsOff, __ATOMIC_RELAXED) & kAvailFNoInterrupt) == 0;
}

void SplitQueue::enable_notifications() {
  if (cfg_.event_idx) {
    // §2.7.10: kick us once the driver makes entry next_avail_ available.
    store16(used_ + used_avail_event_off(cfg_.size), next_avail_, __ATOMIC_RELAXED);
  } else {
    store16(used_ + kRingFlagsOff, 0, __ATOMIC_RELAXED);
  }
  // ORDER: full fence between publishing avail_event/flags and the caller's
  // re-check of avail->idx (pop()); pairs with the driver's fence between
  // storing avail->idx and reading avail_event/flags.
  full_fence();
}

void SplitQueue::disable_notifications() {
  if (cfg_.event_idx) {
    // §2.7.10: the driver kicks when its new avail idx passes avail_event; entry
    // next_avail_ - 1 was consumed already, so no entry it adds from now on does.
    store16(used_ + used_avail_event_off(cfg_.size), static_cast<uint16_t>(next_avail_ - 1),
            __ATOMIC_RELAXED);
  } else {
    store16(used_ + kRingFlagsOff, kUsedFNoNotify, __ATOMIC_RELAXED);
  }
}

bool SplitQueue::has_available() const {
  // ORDER: acquire, like pop(): pairs with the driver's release store of avail->idx.
  return load16(avail_ + kRingIdxOff, __ATOMIC_ACQUIRE) != next_avail_;
}

}  // namespace iceblk::virtio
