#include "memory/tsan_shared_memory.h"

#if ICEBLK_TSAN

#include <sys/stat.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <shared_mutex>

extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);

namespace iceblk::memory::tsan {

namespace {

struct Noted {
  size_t len;
  uint64_t dev, ino, file_offset;
};

// Readers take the lock shared: under TSan, shared lockers do not order each other,
// so the registry adds no happens-before between workers of its own.
std::shared_mutex& mu() {
  static auto* m = new std::shared_mutex;
  return *m;
}
std::map<uintptr_t, Noted>& noted() {
  static auto* m = new std::map<uintptr_t, Noted>;
  return *m;
}

// Sync keys: TSan needs an address in ordinary memory to hang a sync object on.
constexpr size_t kKeys = 1 << 16;
char keys[kKeys];

void* key_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::shared_lock lk(mu());
  auto& m = noted();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return const_cast<void*>(p);
  --it;
  if (a - it->first >= it->second.len) return const_cast<void*>(p);
  uint64_t h = it->second.dev * 0x9E3779B97F4A7C15ull ^ it->second.ino * 0xC2B2AE3D27D4EB4Full ^
               (it->second.file_offset + (a - it->first));
  h ^= h >> 29;
  return &keys[h % kKeys];
}

}  // namespace

void note_mapping(const void* base, size_t len, int fd, uint64_t file_offset) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  std::unique_lock lk(mu());
  noted()[reinterpret_cast<uintptr_t>(base)] =
      Noted{len, static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino), file_offset};
}

void forget_mapping(const void* base) {
  std::unique_lock lk(mu());
  noted().erase(reinterpret_cast<uintptr_t>(base));
}

// ICEBLK_TSAN_NO_SHARED_SYNC=1 turns the keys off, to see the false reports they
// prevent (docs/fuzzing.md, "Sanitizers").
bool enabled() {
  static const bool on = std::getenv("ICEBLK_TSAN_NO_SHARED_SYNC") == nullptr;
  return on;
}

void acquire(const void* p) {
  if (enabled()) __tsan_acquire(key_of(p));
}
void release(const void* p) {
  if (enabled()) __tsan_release(key_of(p));
}

}  // namespace iceblk::memory::tsan

#endif  // ICEBLK_TSAN
