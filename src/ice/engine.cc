// The physical keyslot table shared by the VMs (spec §5, §7).
#include "ice/engine.h"

#include <algorithm>
#include <atomic>

#include "base/secret_bytes.h"

namespace iceblk::ice {
namespace {

constexpr uint32_t kMaxSlots = 256;   // slot ids are u8 on the wire
constexpr uint32_t kMaxVmSlots = 255; // max_slots is 1..255 (spec §2)

struct Slot {
  mutable std::mutex mu;  // guards `key`; held only to swap or copy the pointer
  std::shared_ptr<const ProgrammedKey> key;
};

struct VmEntry {
  VmId id;
  std::string name;
  SlotRange range;
};

std::string range_str(const SlotRange& r) {
  return fmt::format("[{}, {})", r.offset, uint64_t{r.offset} + r.count);
}

}  // namespace

struct Engine::Impl {
  EngineConfig cfg;
  std::unique_ptr<Slot[]> slots;
  mutable std::mutex vm_mu;  // guards vms, next_vm
  std::vector<VmEntry> vms;
  uint32_t next_vm = 1;
  std::atomic<uint64_t> next_generation{1};
  SlotObserver observer;

  // The observer is told which VM owns the slot (looked up under vm_mu).
  void notify(PhysSlot s, bool programmed) const {
    if (!observer) return;
    SlotEvent ev;
    ev.slot = s;
    ev.programmed = programmed;
    std::string name;
    {
      std::lock_guard lock(vm_mu);
      for (const VmEntry& v : vms) {
        if (v.range.contains(s)) {
          ev.vm = v.id;
          name = v.name;
          break;
        }
      }
    }
    ev.vm_name = name;
    observer(ev);
  }

  Result<Slot*> slot(PhysSlot s) const {
    if (s.value >= cfg.num_slots) {
      return fail(Errc::kOutOfRange, "keyslot {} out of range (engine has {} slots)", s.value,
                  cfg.num_slots);
    }
    return &slots[s.value];
  }

  // Swap the slot's key; the old key is released outside the lock (its destruction
  // zeroises key material and frees the keyed cipher contexts).
  // Returns whether the slot held a key.
  bool replace(Slot& s, std::shared_ptr<const ProgrammedKey> k) {
    {
      std::lock_guard lock(s.mu);
      s.key.swap(k);
    }
    const bool had = k != nullptr;
    k.reset();
    return had;
  }
};

Engine::Engine(const EngineConfig& cfg) : impl_(std::make_unique<Impl>()) {
  impl_->cfg = cfg;
  impl_->slots = std::make_unique<Slot[]>(cfg.num_slots);
}

Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::create(const EngineConfig& cfg) {
  if (cfg.num_slots == 0 || cfg.num_slots > kMaxSlots) {
    return fail(Errc::kInvalidArgument, "engine slot count {} must be in 1..{}", cfg.num_slots,
                kMaxSlots);
  }
  return std::unique_ptr<Engine>(new Engine(cfg));
}

uint32_t Engine::num_slots() const { return impl_->cfg.num_slots; }
bool Engine::allow_ecb() const { return impl_->cfg.allow_ecb; }

Result<VmId> Engine::add_vm(std::string name, SlotRange range) {
  if (range.count == 0 || range.count > kMaxVmSlots) {
    return fail(Errc::kInvalidArgument, "VM '{}': slot count {} must be in 1..{}", name,
                range.count, kMaxVmSlots);
  }
  if (uint64_t{range.offset} + range.count > impl_->cfg.num_slots) {
    return fail(Errc::kOutOfRange, "VM '{}': slot range {} exceeds the engine's {} slots", name,
                range_str(range), impl_->cfg.num_slots);
  }
  std::lock_guard lock(impl_->vm_mu);
  for (const VmEntry& v : impl_->vms) {
    if (v.range.overlaps(range)) {
      return fail(Errc::kInvalidArgument,
                  "VM '{}': slot range {} overlaps VM '{}' (id {}) with range {}", name,
                  range_str(range), v.name, v.id.value, range_str(v.range));
    }
  }
  const VmId id(impl_->next_vm++);
  impl_->vms.push_back(VmEntry{id, std::move(name), range});
  return id;
}

void Engine::remove_vm(VmId vm) {
  SlotRange range;
  std::string name;
  {
    std::lock_guard lock(impl_->vm_mu);
    auto it = std::find_if(impl_->vms.begin(), impl_->vms.end(),
                           [&](const VmEntry& v) { return v.id == vm; });
    if (it == impl_->vms.end()) return;
    range = it->range;
    name = it->name;
    impl_->vms.erase(it);
  }
  // The VM is gone from the table: tell the observer whose slots these were.
  for (uint32_t i = range.offset; i < range.offset + range.count && i < impl_->cfg.num_slots; ++i) {
    if (impl_->replace(impl_->slots[i], nullptr) && impl_->observer) {
      impl_->observer(SlotEvent{PhysSlot{i}, vm, name, false});
    }
  }
}

Result<SlotRange> Engine::vm_range(VmId vm) const {
  std::lock_guard lock(impl_->vm_mu);
  for (const VmEntry& v : impl_->vms) {
    if (v.id == vm) return v.range;
  }
  return fail(Errc::kNotFound, "no VM with id {}", vm.value);
}

Status Engine::program(PhysSlot slot, Key key) {
  ICEBLK_ASSIGN_OR_RETURN(Slot* s, impl_->slot(slot));
  if (key.mode().alg == Algorithm::kAesEcb && !impl_->cfg.allow_ecb) {
    clear_vector_registers();  // refused, but the key bytes came through them all the same
    return fail(Errc::kUnsupported, "keyslot {}: AES-ECB is not enabled on this engine",
                slot.value);
  }
  const uint64_t gen = impl_->next_generation.fetch_add(1, std::memory_order_relaxed);
  impl_->replace(*s, std::make_shared<const ProgrammedKey>(std::move(key), gen));
  impl_->notify(slot, true);
  // The key passed through this thread's vector registers (the copy out of the guest
  // or the secure-world frame, the ESSIV salt's SHA-256): a dump must not find it there.
  clear_vector_registers();
  return {};
}

Status Engine::evict(PhysSlot slot) {
  ICEBLK_ASSIGN_OR_RETURN(Slot* s, impl_->slot(slot));
  if (impl_->replace(*s, nullptr)) impl_->notify(slot, false);
  return {};
}

Result<std::shared_ptr<const ProgrammedKey>> Engine::lookup(PhysSlot slot) const {
  ICEBLK_ASSIGN_OR_RETURN(Slot* s, impl_->slot(slot));
  std::shared_ptr<const ProgrammedKey> k;
  {
    std::lock_guard lock(s->mu);
    k = s->key;
  }
  if (!k) return fail(Errc::kNotFound, "keyslot {} is empty", slot.value);
  return k;
}

void Engine::evict_range(SlotRange range) {
  const uint64_t end = std::min<uint64_t>(uint64_t{range.offset} + range.count,
                                          impl_->cfg.num_slots);
  for (uint64_t i = range.offset; i < end; ++i) {
    if (impl_->replace(impl_->slots[i], nullptr)) impl_->notify(PhysSlot{static_cast<uint32_t>(i)}, false);
  }
}

void Engine::set_slot_observer(SlotObserver obs) { impl_->observer = std::move(obs); }

Status Engine::crypt(CryptContext& ctx, PhysSlot slot, Direction dir, Dun first,
                     std::span<uint8_t> buf) const {
  ICEBLK_ASSIGN_OR_RETURN(auto key, lookup(slot));
  return ctx.crypt(*key, dir, first, buf);
}

}  // namespace iceblk::ice
