#include "memory/fault_guard.h"

#include <signal.h>
#include <sys/mman.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <mutex>

namespace iceblk::memory::fault_guard {

namespace {

// One registered range. `tag` = generation << 1 | active: the handler reads the
// fields between two loads of the tag (a seqlock) and uses them only if the tag did
// not change, so a slot being reused for another range is never half-read.
struct Entry {
  std::atomic<uint64_t> tag{0};
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<uintptr_t> granule{0};
  std::atomic<uint32_t> poisoned{0};
  std::atomic<bool> claimed{false};  // owned by a registration (writers only)
};

constexpr uint64_t kActive = 1;

std::array<Entry, kMaxRanges> g_entries;
std::atomic<uint64_t> g_contained{0};
struct sigaction g_previous {};
std::once_flag g_installed;
Status g_install_status;

static_assert(std::atomic<uint64_t>::is_always_lock_free &&
                  std::atomic<uintptr_t>::is_always_lock_free &&
                  std::atomic<uint32_t>::is_always_lock_free,
              "the SIGBUS handler needs lock-free atomics (async-signal-safe)");

// Async-signal-safe: atomics, mmap and sigaction only.
void on_sigbus(int sig, siginfo_t* si, void* /*uctx*/) {
  const int saved_errno = errno;
  if (si != nullptr && (si->si_code == BUS_ADRERR || si->si_code == BUS_MCEERR_AR)) {
    const auto addr = reinterpret_cast<uintptr_t>(si->si_addr);
    for (Entry& e : g_entries) {
      const uint64_t t1 = e.tag.load(std::memory_order_acquire);
      if ((t1 & kActive) == 0) continue;
      const uintptr_t b = e.begin.load(std::memory_order_relaxed);
      const uintptr_t n = e.end.load(std::memory_order_relaxed);
      const uintptr_t g = e.granule.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (e.tag.load(std::memory_order_relaxed) != t1) continue;
      if (addr < b || addr >= n) continue;
      // From the faulting granule to the end of the mapping: a shrunk file is missing
      // its tail, so every later page would fault too.
      const uintptr_t from = b + ((addr - b) & ~(g - 1));
      void* p = ::mmap(reinterpret_cast<void*>(from), n - from, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (p == MAP_FAILED) break;  // cannot contain it: die below
      e.poisoned.store(1, std::memory_order_release);
      g_contained.fetch_add(1, std::memory_order_relaxed);
      errno = saved_errno;
      return;  // the faulting access retries on the zero pages
    }
  }
  // Not a guest-memory fault: a bug of ours. Restore the previous disposition; a
  // hardware fault recurs when the instruction retries, anything else is re-raised.
  ::sigaction(sig, &g_previous, nullptr);
  if (si == nullptr || si->si_code <= 0) ::raise(sig);
  errno = saved_errno;
}

Status install() {
  std::call_once(g_installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    // SA_ONSTACK: a thread with an alternate signal stack (sanitizers set one up)
    // uses it; the others run the handler on their own stack, which is fine: a
    // guest-memory fault is never a stack overflow.
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (::sigaction(SIGBUS, &sa, &g_previous) != 0) {
      g_install_status = tl::unexpected(errno_error(Errc::kIo, "sigaction(SIGBUS)", errno));
    }
  });
  return g_install_status;
}

}  // namespace

Result<uint32_t> register_range(void* base, size_t len, size_t granule) {
  if (base == nullptr || len == 0 || granule == 0 || (granule & (granule - 1)) != 0) {
    return fail(Errc::kInvalidArgument, "fault guard: bad range {}+{:#x} (granule {:#x})", base,
                len, granule);
  }
  // The kernel's mapping ends on a granule boundary (mmap rounds the length up; a
  // hugetlbfs mapping cannot be split inside a huge page): so does the range.
  const uintptr_t begin = reinterpret_cast<uintptr_t>(base);
  if (len > UINTPTR_MAX - begin - (granule - 1)) {
    return fail(Errc::kOverflow, "fault guard: range {}+{:#x} wraps", base, len);
  }
  const uintptr_t end = begin + ((len + granule - 1) & ~(granule - 1));
  ICEBLK_TRY(install());
  for (uint32_t i = 0; i < kMaxRanges; ++i) {
    Entry& e = g_entries[i];
    bool expected = false;
    if (!e.claimed.compare_exchange_strong(expected, true, std::memory_order_acquire)) continue;
    const uint64_t gen = e.tag.load(std::memory_order_relaxed) >> 1;
    // Inactive while the fields change: the handler skips the slot.
    e.tag.store((gen + 1) << 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    e.begin.store(begin, std::memory_order_relaxed);
    e.end.store(end, std::memory_order_relaxed);
    e.granule.store(granule, std::memory_order_relaxed);
    e.poisoned.store(0, std::memory_order_relaxed);
    // ORDER: publishes the fields above to the handler's acquire load of the tag.
    e.tag.store(((gen + 2) << 1) | kActive, std::memory_order_release);
    return i;
  }
  return fail(Errc::kBusy, "fault guard: all {} guest memory ranges in use", kMaxRanges);
}

void unregister_range(uint32_t id) {
  if (id >= kMaxRanges) return;
  Entry& e = g_entries[id];
  // ORDER: seq_cst, before the caller's munmap: a handler that runs afterwards no
  // longer finds the range.
  e.tag.store(((e.tag.load(std::memory_order_relaxed) >> 1) + 1) << 1, std::memory_order_seq_cst);
  e.claimed.store(false, std::memory_order_release);
}

bool poisoned(uint32_t id) {
  return id < kMaxRanges && g_entries[id].poisoned.load(std::memory_order_acquire) != 0;
}

uint64_t contained_faults() {
  return g_contained.load(std::memory_order_relaxed);
}

}  // namespace iceblk::memory::fault_guard
