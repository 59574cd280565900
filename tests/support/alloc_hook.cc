#include "support/alloc_hook.h"

#include <atomic>
#include <cerrno>
#include <cstddef>

namespace iceblk::testing {
namespace {

std::atomic<AllocObserver> g_observer{nullptr};
thread_local bool t_in_observer = false;

void observe() {
  AllocObserver f = g_observer.load(std::memory_order_relaxed);
  if (f == nullptr || t_in_observer) return;
  t_in_observer = true;
  f();
  t_in_observer = false;
}

}  // namespace

void set_alloc_observer(AllocObserver observer) {
  g_observer.store(observer);
}

}  // namespace iceblk::testing

#ifndef ICEBLK_ALLOC_HOOK_SANITIZED
using iceblk::testing::observe;
// glibc's allocator entry points, so ours can observe and forward.
extern "C" void* __libc_malloc(size_t);
extern "C" void* __libc_calloc(size_t, size_t);
extern "C" void* __libc_realloc(void*, size_t);
extern "C" void* __libc_memalign(size_t, size_t);

extern "C" void* malloc(size_t n) {
  observe();
  return __libc_malloc(n);
}
extern "C" void* calloc(size_t a, size_t b) {
  observe();
  return __libc_calloc(a, b);
}
extern "C" void* realloc(void* p, size_t n) {
  observe();
  return __libc_realloc(p, n);
}
extern "C" void* memalign(size_t a, size_t n) {
  observe();
  return __libc_memalign(a, n);
}
extern "C" void* aligned_alloc(size_t a, size_t n) {
  observe();
  return __libc_memalign(a, n);
}
extern "C" int posix_memalign(void** out, size_t a, size_t n) {
  observe();
  void* p = __libc_memalign(a, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
#endif
