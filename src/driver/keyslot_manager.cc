#include "iceblk/keyslot_manager.h"

namespace iceblk::driver {

KeyslotManager::KeyslotManager(uint32_t num_slots, ProgramFn program, EvictFn evict)
    : program_(std::move(program)), evict_(std::move(evict)), slots_(num_slots) {}

KeyslotManager::~KeyslotManager() = default;

KeyslotManager::Lease::Lease(Lease&& o) noexcept
    : mgr_(std::exchange(o.mgr_, nullptr)), slot_(o.slot_), mode_(o.mode_), key_(std::move(o.key_)) {}

KeyslotManager::Lease& KeyslotManager::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    release();
    mgr_ = std::exchange(o.mgr_, nullptr);
    slot_ = o.slot_;
    mode_ = o.mode_;
    key_ = std::move(o.key_);
  }
  return *this;
}

KeyslotManager::Lease::~Lease() { release(); }

void KeyslotManager::Lease::release() {
  if (mgr_ != nullptr) std::exchange(mgr_, nullptr)->release_slot(slot_, key_);
}

Status KeyslotManager::add_key(const std::string& name, ice::Key key) {
  std::lock_guard lk(mu_);
  if (keys_.count(name) != 0) return fail(Errc::kInvalidArgument, "key '{}' already exists", name);
  keys_.emplace(name, Entry{std::move(key), std::nullopt, 0});
  return {};
}

bool KeyslotManager::has_key(const std::string& name) const {
  std::lock_guard lk(mu_);
  return keys_.count(name) != 0;
}

Status KeyslotManager::remove_key(const std::string& name) {
  std::unique_lock lk(mu_);
  auto it = keys_.find(name);
  if (it == keys_.end()) return fail(Errc::kNotFound, "no key named '{}'", name);
  if (it->second.leases != 0) return fail(Errc::kBusy, "key '{}' has requests in flight", name);
  std::optional<uint32_t> slot = it->second.slot;
  if (slot && slots_[*slot].programming) return fail(Errc::kBusy, "key '{}' is being programmed", name);
  keys_.erase(it);
  if (!slot) return {};
  // Keep the slot reserved while evicting so nobody programs it concurrently.
  slots_[*slot].key_name.reset();
  slots_[*slot].programming = true;
  lk.unlock();
  Status st = evict_(*slot);
  lk.lock();
  slots_[*slot].programming = false;
  cv_.notify_all();
  return st;
}

Result<KeyslotManager::Lease> KeyslotManager::acquire(const std::string& name,
                                                      std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lk(mu_);
  for (;;) {
    auto it = keys_.find(name);
    if (it == keys_.end()) return fail(Errc::kNotFound, "no key named '{}'", name);
    Entry& e = it->second;
    if (e.slot) {
      Slot& s = slots_[*e.slot];
      if (!s.programming) {
        ++s.refs;
        ++e.leases;
        s.last_used = ++clock_;
        return Lease(this, *e.slot, e.key.mode(), name);
      }
    } else {
      // Pick an empty slot, else the least recently used idle one.
      std::optional<uint32_t> victim;
      for (uint32_t i = 0; i < slots_.size(); ++i) {
        const Slot& s = slots_[i];
        if (s.refs != 0 || s.programming) continue;
        if (!s.key_name) {
          victim = i;
          break;
        }
        if (!victim || s.last_used < slots_[*victim].last_used) victim = i;
      }
      if (victim) {
        Slot& s = slots_[*victim];
        if (s.key_name) {
          auto old = keys_.find(*s.key_name);
          if (old != keys_.end()) old->second.slot.reset();
        }
        s.key_name = name;
        s.programming = true;
        e.slot = *victim;
        lk.unlock();
        // The program callback replaces whatever the slot held (spec §6), so no
        // separate evict is needed for the LRU victim.
        Status st = program_(*victim, e.key);
        lk.lock();
        s.programming = false;
        cv_.notify_all();
        auto again = keys_.find(name);
        if (!st) {
          s.key_name.reset();
          if (again != keys_.end()) again->second.slot.reset();
          return tl::unexpected(st.error());
        }
        ++programs_;
        continue;  // take the lease through the normal path
      }
    }
    if (cv_.wait_until(lk, deadline) == std::cv_status::timeout &&
        std::chrono::steady_clock::now() >= deadline) {
      return fail(Errc::kBusy, "all {} keyslots are busy", slots_.size());
    }
  }
}

void KeyslotManager::release_slot(uint32_t slot, const std::string& key) {
  std::lock_guard lk(mu_);
  Slot& s = slots_[slot];
  if (s.refs > 0) --s.refs;
  auto it = keys_.find(key);
  if (it != keys_.end() && it->second.leases > 0) --it->second.leases;
  cv_.notify_all();
}

Status KeyslotManager::reprogram_all() {
  std::unique_lock lk(mu_);
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].key_name) continue;
    auto it = keys_.find(*slots_[i].key_name);
    if (it == keys_.end()) continue;
    // Keys are immutable and only erased with no leases and no slot, so the
    // reference stays valid while unlocked; `programming` keeps others off the slot.
    slots_[i].programming = true;
    const ice::Key& key = it->second.key;
    lk.unlock();
    Status st = program_(i, key);
    lk.lock();
    slots_[i].programming = false;
    cv_.notify_all();
    if (!st) return st;
    ++programs_;
  }
  return {};
}

void KeyslotManager::invalidate_all() {
  std::lock_guard lk(mu_);
  for (auto& s : slots_) s.key_name.reset();
  for (auto& [name, e] : keys_) e.slot.reset();
}

std::optional<std::string> KeyslotManager::slot_owner(uint32_t slot) const {
  std::lock_guard lk(mu_);
  if (slot >= slots_.size()) return std::nullopt;
  return slots_[slot].key_name;
}

uint64_t KeyslotManager::programs_done() const {
  std::lock_guard lk(mu_);
  return programs_;
}

}  // namespace iceblk::driver
