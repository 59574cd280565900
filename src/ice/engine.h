// The Inline Crypto Engine: a physical keyslot table shared by several VMs, each
// confined to its own slot range, and the per-data-unit cipher (spec §4-5).
//
// Concurrency: program/evict/lookup are safe from any thread. A lookup returns a
// shared reference to the key the slot held at that moment; a request keeps using
// it even if the slot is reprogrammed meanwhile (spec §6). Key memory is zeroised
// when the last reference goes away, and the slot's own copy is dropped at eviction.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
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

namespace detail {
struct CipherSet;  // keyed OpenSSL contexts of one key (engine internals)

// Idle keyed cipher contexts of one ProgrammedKey, reused by every worker that
// crypts with the key, so the AES key schedule is computed once per key and worker,
// never per request. The contexts (which hold expanded key material) live exactly as
// long as the key: they are freed, and cleansed by OpenSSL, when the last reference
// to the ProgrammedKey goes away, never lingering in a worker after eviction.
// Thread-safe; acquire/release do not allocate in the steady state.
class CipherPool {
 public:
  CipherPool() = default;
  CipherPool(CipherPool&& o) noexcept;  // takes o's idle contexts
  CipherPool& operator=(CipherPool&&) = delete;
  CipherPool(const CipherPool&) = delete;
  CipherPool& operator=(const CipherPool&) = delete;
  ~CipherPool();

  CipherSet* acquire();         // an idle set, or nullptr when none is idle
  void release(CipherSet* s);   // give a set back for reuse
  static void destroy(CipherSet* s);

 private:
  std::mutex mu_;
  std::vector<CipherSet*> idle_;  // owned
};

// Borrows a keyed CipherSet from a key's pool for one crypt call, or for one thread's
// part of a call that CryptPool splits (the caller leases a set for each thread it
// hands the call to, so the key's pool grows only with the largest split). A set that
// saw an OpenSSL failure is destroyed instead of being returned.
class CipherLease {
 public:
  explicit CipherLease(CipherPool& pool) : pool_(pool), set_(pool.acquire()) {}
  ~CipherLease();
  CipherLease(const CipherLease&) = delete;
  CipherLease& operator=(const CipherLease&) = delete;

  // Make sure the set holds a context keyed with `key` for `dir` (allocates a set,
  // or keys a context, only the first time).
  Status ensure(const Key& key, Direction dir);
  void mark_failed() { healthy_ = false; }
  CipherSet& set() { return *set_; }

 private:
  CipherPool& pool_;
  CipherSet* set_;
  bool healthy_ = true;
};
}  // namespace detail

class CryptPool;

// A key as programmed into a slot. Immutable; `generation` is unique per program
// call (Engine::program assigns it) so a reprogrammed slot can be told apart.
struct ProgrammedKey {
  ProgrammedKey(Key k, uint64_t gen) : key(std::move(k)), generation(gen) {}

  Key key;
  uint64_t generation;
  // Internal to CryptContext: keyed cipher contexts for this key (see CipherPool).
  mutable detail::CipherPool cipher_cache;
};

// Per-worker handle for the per-data-unit cipher. Not thread-safe: one per queue
// worker. The keyed OpenSSL contexts themselves are cached in the ProgrammedKey
// (see detail::CipherPool) so they die with the key; per data unit the engine only
// sets the IV/tweak and runs the cipher, without allocating (see crypt_context.cc
// for why it calls the provider's dispatch functions rather than EVP per unit).
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
  // On an error after checks passed (kCrypto) `buf` holds partial output: discard it.
  Status crypt(const ProgrammedKey& key, Direction dir, Dun first, std::span<uint8_t> buf);

  // Out of place: `in` and `out` have the same size and are either the same bytes
  // or do not overlap. Same errors, plus kInvalidArgument for different sizes.
  Status crypt(const ProgrammedKey& key, Direction dir, Dun first, std::span<const uint8_t> in,
               std::span<uint8_t> out);

  // Scatter/gather, out of place: `len` bytes (whole data units) read from `src`
  // starting `src_off` bytes into the list, the result written to `dst` from
  // `dst_off` on. This is the one pass over the data (the data path's copy is the
  // cipher): every source byte is read once and every destination byte written
  // once, with its final value. A data unit split across iovecs on either side is
  // gathered into a private per-context block, crypted there and scattered, so the
  // destination never holds an intermediate value (on IN: never ciphertext in the
  // driver's buffer; on OUT: the driver's buffer is only read). `src` and `dst`
  // must not overlap unless they are the same bytes. kOutOfRange when either list
  // holds fewer than `len` bytes past its offset; otherwise the errors of crypt().
  Status crypt(const ProgrammedKey& key, Direction dir, Dun first, std::span<const iovec> src,
               uint64_t src_off, std::span<const iovec> dst, uint64_t dst_off, uint64_t len);

 private:
  friend class CryptPool;  // splits one call into pieces (crypt_pool.h)
  // The checks of the scatter/gather crypt(), which writes nothing when they fail.
  static Status check(const ProgrammedKey& key, Dun first, std::span<const iovec> src,
                      uint64_t src_off, std::span<const iovec> dst, uint64_t dst_off, uint64_t len);
  // crypt() after check(), with a set leased and ensured for (key, dir).
  Status crypt_leased(detail::CipherLease& lease, const ProgrammedKey& key, Direction dir,
                      Dun first, std::span<const iovec> src, uint64_t src_off,
                      std::span<const iovec> dst, uint64_t dst_off, uint64_t len);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct EngineConfig {
  uint32_t num_slots = kDefaultNumSlots;  // 1..256 (slot ids are u8 on the wire)
  bool allow_ecb = false;                 // AES-ECB is opt-in only
};

// A slot gained or lost a key (for the control socket's KEYSLOT_* events and
// counters). Carries the slot and its VM only: never anything about the key.
struct SlotEvent {
  PhysSlot slot{0};
  VmId vm{0};             // 0 when no VM owns the slot
  std::string_view vm_name;
  bool programmed = false;  // false: evicted (only slots that held a key)
};
using SlotObserver = std::function<void(const SlotEvent&)>;

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const EngineConfig& cfg);
  ~Engine();

  [[nodiscard]] uint32_t num_slots() const;
  [[nodiscard]] bool allow_ecb() const;

  // Register a VM (export) with its physical range; ids start at 1. Errors: kInvalidArgument for an
  // empty range or count > 255, kOutOfRange beyond num_slots, kInvalidArgument
  // naming both VMs when it overlaps an existing VM's range.
  Result<VmId> add_vm(std::string name, SlotRange range);
  void remove_vm(VmId vm);  // evicts and zeroises the VM's slots
  Result<SlotRange> vm_range(VmId vm) const;

  // Physical slot operations. kOutOfRange for slot >= num_slots.
  // kUnsupported for an AES-ECB key when the engine was not created with allow_ecb.
  Status program(PhysSlot slot, Key key);
  Status evict(PhysSlot slot);  // evicting an empty slot succeeds
  // kNotFound if the slot is empty.
  Result<std::shared_ptr<const ProgrammedKey>> lookup(PhysSlot slot) const;
  void evict_range(SlotRange range);

  // Called after every program and every eviction of a slot that held a key, on
  // the thread that did it (outside the engine's locks). Set it before the engine
  // is shared with other threads; it must be cheap and must not call back into
  // program/evict.
  void set_slot_observer(SlotObserver obs);

  // Convenience: look up `slot` and crypt in place with `ctx`.
  Status crypt(CryptContext& ctx, PhysSlot slot, Direction dir, Dun first, std::span<uint8_t> buf) const;

 private:
  Engine(const EngineConfig& cfg);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace iceblk::ice
