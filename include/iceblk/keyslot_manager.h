// Keyslot manager of the driver library, modelled on Linux blk_crypto_profile
// (block/blk-crypto-profile.c): callers name keys, the manager maps them onto the
// device's `max_slots` slots on demand.
//
// - A key is programmed into a slot when first acquired; the slot stays
//   programmed after release, so the next acquire of the same key is free.
// - Each slot has a reference count of in-flight users. Only idle slots
//   (refcount 0) are reused, least recently used first.
// - When every slot is busy, acquire() waits up to its timeout for one to become
//   idle, then fails with kBusy.
// - After a device reset or reconnect, reprogram_all() programs every key that was
//   in a slot again (like blk_crypto_reprogram_all_keys).
// Slot numbers here are the driver's *virtual* slots [0, max_slots); the callback
// translates them for the device (in-band: as is; out-of-band: + slot_offset).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "iceblk/result.h"
#include "iceblk/key.h"

namespace iceblk::driver {

class KeyslotManager {
 public:
  // Program `key` into virtual slot `slot` / evict `slot`. Called with the manager's
  // lock released; never concurrently for the same slot.
  using ProgramFn = std::function<Status(uint32_t slot, const ice::Key& key)>;
  using EvictFn = std::function<Status(uint32_t slot)>;

  KeyslotManager(uint32_t num_slots, ProgramFn program, EvictFn evict);
  ~KeyslotManager();
  KeyslotManager(const KeyslotManager&) = delete;
  KeyslotManager& operator=(const KeyslotManager&) = delete;

  // A held slot: the key stays in it until the lease is released (destroyed).
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept;
    Lease& operator=(Lease&& o) noexcept;
    ~Lease();
    [[nodiscard]] uint32_t slot() const { return slot_; }
    [[nodiscard]] const ice::CryptoMode& mode() const { return mode_; }
    [[nodiscard]] bool valid() const { return mgr_ != nullptr; }
    void release();

   private:
    friend class KeyslotManager;
    Lease(KeyslotManager* m, uint32_t s, ice::CryptoMode mode, std::string key)
        : mgr_(m), slot_(s), mode_(mode), key_(std::move(key)) {}
    KeyslotManager* mgr_ = nullptr;
    uint32_t slot_ = 0;
    ice::CryptoMode mode_{};
    std::string key_;
  };

  // Register a key under `name`. kInvalidArgument if the name exists.
  Status add_key(const std::string& name, ice::Key key);
  // Forget a key, evicting it from its slot. kBusy while leases on it exist,
  // kNotFound for an unknown name.
  Status remove_key(const std::string& name);
  [[nodiscard]] bool has_key(const std::string& name) const;

  // Get a slot holding `name`'s key, programming it (and evicting the least recently
  // used idle slot) if needed. Waits up to `timeout` when every slot is busy, then
  // fails with kBusy. Program errors are returned as is.
  Result<Lease> acquire(const std::string& name,
                        std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

  // Program every key that currently owns a slot again (after a device reset).
  Status reprogram_all();
  // The device lost all keys (reset without reprogramming): forget slot contents.
  void invalidate_all();

  [[nodiscard]] uint32_t num_slots() const { return static_cast<uint32_t>(slots_.size()); }
  // Which key name a slot holds (nullopt if empty); for tests and `iceblk info`.
  [[nodiscard]] std::optional<std::string> slot_owner(uint32_t slot) const;
  [[nodiscard]] uint64_t programs_done() const;

 private:
  struct Slot {
    std::optional<std::string> key_name;
    uint32_t refs = 0;
    uint64_t last_used = 0;  // LRU clock
    bool programming = false;
  };
  struct Entry {
    ice::Key key;
    std::optional<uint32_t> slot;
    uint32_t leases = 0;
  };
  void release_slot(uint32_t slot, const std::string& key);

  ProgramFn program_;
  EvictFn evict_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;
  std::map<std::string, Entry> keys_;
  uint64_t clock_ = 0;
  uint64_t programs_ = 0;
};

}  // namespace iceblk::driver
