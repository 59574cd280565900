#include "base/secret_bytes.h"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace iceblk {

void secure_zero(void* p, size_t n) {
  if (p != nullptr && n != 0) OPENSSL_cleanse(p, n);
}

#if defined(__x86_64__)
namespace {

// The clobbers tell the compiler these registers lose their values, so it keeps
// nothing of its own in them across the call.
__attribute__((target("avx512f"))) void clear_avx512() {
  asm volatile(
      "vzeroall\n\t"  // ZMM0-15, all bits (64-bit mode)
      "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
      "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
      "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
      "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
      "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
      "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
      "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
      "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31" ::
          : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
            "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",
            "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

__attribute__((target("avx"))) void clear_avx() {
  asm volatile("vzeroall" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
               "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

void clear_sse() {
  asm volatile(
      "pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\tpxor %%xmm3, %%xmm3\n\t"
      "pxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\tpxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\t"
      "pxor %%xmm8, %%xmm8\n\tpxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
      "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\tpxor %%xmm15, %%xmm15" ::
          : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
            "xmm13", "xmm14", "xmm15");
}

}  // namespace
#endif

void clear_vector_registers() {
#if defined(__x86_64__)
  // Checked on every call: cheap (a cached cpuid word), and keys are programmed rarely.
  if (__builtin_cpu_supports("avx512f")) {
    clear_avx512();
  } else if (__builtin_cpu_supports("avx")) {
    clear_avx();
  } else {
    clear_sse();
  }
#endif
}

namespace {

thread_local int t_secret_scope = 0;
std::atomic<bool> g_full_warned{false};

void warn_arena_full() {
  if (!g_full_warned.exchange(true)) {
    spdlog::warn(
        "key arena ({} bytes) is full: further key material is in ordinary memory (dumpable, "
        "swappable)",
        kSecretArenaBytes);
  }
}

// From the arena when one exists; ordinary memory only when it is full.
void* secret_alloc(size_t n) {
  void* p = CRYPTO_secure_malloc_initialized() ? CRYPTO_secure_malloc(n, nullptr, 0) : nullptr;
  if (p == nullptr && CRYPTO_secure_malloc_initialized()) warn_arena_full();
  return p != nullptr ? p : std::malloc(n);
}

// OpenSSL's allocator (CRYPTO_set_mem_functions): the ordinary heap, except inside a
// SecretAllocScope. file/line are not passed on: with them, a full arena would raise
// an OpenSSL error, which allocates, which recurses here.
void* openssl_malloc(size_t n, const char*, int) {
  if (t_secret_scope > 0 && n != 0) return secret_alloc(n);
  return std::malloc(n);
}

void openssl_free(void* p, const char*, int) {
  if (p == nullptr) return;
  if (CRYPTO_secure_allocated(p)) {
    CRYPTO_secure_clear_free(p, CRYPTO_secure_actual_size(p), nullptr,
                             0);  // cleansed, back to the arena
  } else {
    std::free(p);
  }
}

void* openssl_realloc(void* p, size_t n, const char* file, int line) {
  if (p == nullptr) return openssl_malloc(n, file, line);
  if (!CRYPTO_secure_allocated(p)) return std::realloc(p, n);
  if (n == 0) {
    openssl_free(p, file, line);
    return nullptr;
  }
  // Arena memory stays in the arena (or its fallback): copy, cleanse the old chunk.
  const size_t old = CRYPTO_secure_actual_size(p);
  void* q = secret_alloc(n);
  if (q == nullptr) return nullptr;
  std::memcpy(q, p, old < n ? old : n);
  CRYPTO_secure_clear_free(p, old, nullptr, 0);
  return q;
}

}  // namespace

SecretAllocScope::SecretAllocScope() {
  ++t_secret_scope;
}
SecretAllocScope::~SecretAllocScope() {
  --t_secret_scope;
}

Result<SecretMemoryStatus> init_secret_memory(size_t arena_bytes) {
  SecretMemoryStatus st;
  // Before the arena: OpenSSL accepts a new allocator only before its first allocation.
  st.openssl_contexts =
      CRYPTO_set_mem_functions(openssl_malloc, openssl_realloc, openssl_free) == 1;
  if (CRYPTO_secure_malloc_initialized() == 0) {
    // 1: arena mapped, guarded, locked and MADV_DONTDUMP; 2: mapped, but one of the
    // protections (in practice mlock, under RLIMIT_MEMLOCK) failed; 0: no arena.
    const int r = CRYPTO_secure_malloc_init(arena_bytes, 32);
    if (r == 0)
      return fail(Errc::kIo, "cannot create the {}-byte key arena (OpenSSL secure heap)",
                  arena_bytes);
    st.arena = true;
    st.locked = r == 1;
  } else {
    st.arena = true;
    st.locked = true;
  }
  if (!st.locked) {
    rlimit rl{};
    ::getrlimit(RLIMIT_MEMLOCK, &rl);
    st.warning = fmt::format(
        "warning: cannot lock the {} KiB key arena in RAM (RLIMIT_MEMLOCK is {} KiB; raise it, "
        "e.g. LimitMEMLOCK=): "
        "keys stay out of core dumps but may be swapped out",
        arena_bytes >> 10,
        rl.rlim_cur == RLIM_INFINITY ? std::string("unlimited")
                                     : std::to_string(rl.rlim_cur >> 10));
  } else if (!st.openssl_contexts) {
    st.warning =
        "warning: OpenSSL was used before the key arena was set up: key schedules in OpenSSL "
        "contexts are in "
        "ordinary memory";
  }
  return st;
}

SecretBytes::SecretBytes(std::span<const uint8_t> bytes) : SecretBytes(bytes.size()) {
  if (!bytes.empty()) std::memcpy(data_, bytes.data(), bytes.size());
}

SecretBytes::SecretBytes(size_t n) : size_(n) {
  if (n == 0) return;
  // The arena, or (none set up) OpenSSL's allocator: CRYPTO_secure_malloc falls back
  // to CRYPTO_malloc then. A full arena: one warning, then OpenSSL's allocator.
  data_ = static_cast<uint8_t*>(CRYPTO_secure_malloc(n, nullptr, 0));
  if (data_ == nullptr && CRYPTO_secure_malloc_initialized()) {
    warn_arena_full();
    data_ = static_cast<uint8_t*>(CRYPTO_malloc(n, nullptr, 0));
  }
  if (data_ == nullptr) throw std::bad_alloc();
  std::memset(data_, 0, n);
}

SecretBytes::~SecretBytes() {
  wipe();
}

SecretBytes::SecretBytes(SecretBytes&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(o.size_) {
  o.size_ = 0;
}

SecretBytes& SecretBytes::operator=(SecretBytes&& o) noexcept {
  if (this != &o) {
    wipe();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

bool SecretBytes::equals(std::span<const uint8_t> other) const {
  if (other.size() != size_) return false;
  return size_ == 0 || CRYPTO_memcmp(data_, other.data(), size_) == 0;
}

void SecretBytes::wipe() {
  // Cleansed, then back to the arena or to CRYPTO_free (whichever it came from).
  if (data_ != nullptr) CRYPTO_secure_clear_free(data_, size_, nullptr, 0);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace iceblk
