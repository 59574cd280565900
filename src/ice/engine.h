// The Inline Crypto Engine: a physical keyslot table shared by several VMs, each
// confined to its own slot range, and the per-data-unit cipher (spec §4-5).
//
// Concurrency: program/evict/lookup are safe from any thread. A lookup returns a
// shared reference to the key the slot held at that moment; a request keeps using
// it even if the slot is reprogrammed meanwhile (spec §6). Key memory is zeroised
// when the last reference goes away, and the slot's own copy is dropped at eviction.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "base/strong_types.h"
#include "ice/crypto_mode.h"
#include "ice/key.h"

namespace iceblk::ice {

inline constexpr uint32_t kDefaultNumSlots = 64;

// [offset, offset + count) of physical slots.
struct SlotRange {
  uint32_t offset = 0;
  uint32_t count = 0;
  [[nodiscard]] bool contains(PhysSlot s) const {
    return s.value >= offset && s.value - offset < count;
  }
  [[nodiscard]] bool overlaps(const SlotRange& o) const {
    return offset < o.offset + o.count && o.offset < offset + count;
  }
};

// A key as programmed into a slot. Immutable; `generation` is unique per program
// call so per-worker cipher caches can tell a reprogrammed slot apart.
struct ProgrammedKey {
  Key key;
  uint64_t generation;
};

// Per-worker cipher state (OpenSSL EVP contexts, cached key schedules). Not
// thread-safe: one per queue worker. No allocation per data unit.
class CryptContext {
 public:
  CryptContext();
  ~CryptContext();
  CryptContext(const CryptContext&) = delete;
  CryptContext& operator=(const CryptContext&) = delete;

  // Encrypt/decrypt `buf` in place: a whole number of data units of the key's
  // size, unit i with DUN first + i (tweak/IV = le64(dun) || le64(0); ESSIV IV =
  // AES-256_{SHA-256(key)}(that); ECB ignores the DUN).
  // Errors: kMisaligned (length not a multiple of the data unit size, or empty),
  // kOverflow (first + units - 1 > 2^64 - 1), kCrypto (OpenSSL failure).
  Status crypt(const ProgrammedKey& key, Direction dir, Dun first, std::span<uint8_t> buf);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct EngineConfig {
  uint32_t num_slots = kDefaultNumSlots;  // 1..256 (slot ids are u8 on the wire)
  bool allow_ecb = false;                 // AES-ECB is opt-in only
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const EngineConfig& cfg);
  ~Engine();

  [[nodiscard]] uint32_t num_slots() const;
  [[nodiscard]] bool allow_ecb() const;

  // Register a VM (export) with its physical range. Errors: kInvalidArgument for an
  // empty range or count > 255, kOutOfRange beyond num_slots, kInvalidArgument
  // naming both VMs when it overlaps an existing VM's range.
  Result<VmId> add_vm(std::string name, SlotRange range);
  void remove_vm(VmId vm);  // evicts and zeroises the VM's slots
  Result<SlotRange> vm_range(VmId vm) const;

  // Physical slot operations. kOutOfRange for slot >= num_slots.
  Status program(PhysSlot slot, Key key);
  Status evict(PhysSlot slot);  // evicting an empty slot succeeds
  // kNotFound if the slot is empty.
  Result<std::shared_ptr<const ProgrammedKey>> lookup(PhysSlot slot) const;
  void evict_range(SlotRange range);

  // Convenience: look up `slot` and crypt in place with `ctx`.
  Status crypt(CryptContext& ctx, PhysSlot slot, Direction dir, Dun first, std::span<uint8_t> buf) const;

 private:
  Engine(const EngineConfig& cfg);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace iceblk::ice
