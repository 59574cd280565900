// SecretBytes lives in the public API: iceblk/secret_bytes.h (include/ is the one home
// of these types). What follows is internal: where key memory comes from.
//
// Key memory (docs/threat-model.md, "keys out of dumps and swap"): SecretBytes and
// the OpenSSL contexts keyed inside a SecretAllocScope are allocated from OpenSSL's
// secure heap (CRYPTO_secure_malloc_init): one mmap'd arena with guard pages, locked
// in RAM (mlock) and excluded from core dumps (MADV_DONTDUMP); freed chunks are
// cleansed. A process that never calls init_secret_memory() (the driver library,
// the CLI, tests) gets ordinary heap memory, still zeroised on release.
#pragma once

#include <cstddef>
#include <string>

#include "iceblk/result.h"
#include "iceblk/secret_bytes.h"

namespace iceblk {

// Size of iceblkd's key arena: 256 slots x (key + ESSIV salt + the keyed OpenSSL
// contexts of a few concurrent workers, both directions) fits with room to spare.
inline constexpr size_t kSecretArenaBytes = size_t{4} << 20;

struct SecretMemoryStatus {
  bool arena = false;             // the secure heap exists (MADV_DONTDUMP applied)
  bool locked = false;            // ... and is mlock'ed
  bool openssl_contexts = false;  // keyed OpenSSL contexts are allocated in it too
  std::string warning;            // non-empty: one line saying what is not covered, and why
};

// Zeroes this thread's SIMD registers (x86-64: ZMM/YMM/XMM 0-31 as far as the CPU has
// them). memcpy and SHA-256 move key bytes through them and leave them there, and a
// core dump records every thread's registers: call it on the thread that handled key
// material, once the key is where it belongs (Engine::program does). No-op elsewhere.
void clear_vector_registers();

// Once, at start-up, before anything else uses OpenSSL (OpenSSL allows its allocator
// to be replaced only before its first allocation). Errors only when the arena
// cannot be created at all; a missing mlock (RLIMIT_MEMLOCK) is a warning.
Result<SecretMemoryStatus> init_secret_memory(size_t arena_bytes = kSecretArenaBytes);

// While one is alive on a thread, OpenSSL allocations of that thread go to the key
// arena: wrap the calls that create keyed contexts (EVP_CipherInit_ex2 & co.), whose
// provider contexts hold the key schedules. Nests. Cheap (a thread-local counter).
class SecretAllocScope {
 public:
  SecretAllocScope();
  ~SecretAllocScope();
  SecretAllocScope(const SecretAllocScope&) = delete;
  SecretAllocScope& operator=(const SecretAllocScope&) = delete;
};

}  // namespace iceblk
