// Crypto threads: shares of one crypt call on several cores (crypt_pool.h).
//
// One Worker per thread, each with its own mutex. Its state goes
//   kIdle -> kAssigned   the caller claimed the idle thread and wrote its share;
//   kAssigned -> kIdle   the caller took the share back (not started yet);
//   kAssigned -> kRunning -> kDone   the thread ran it;
//   kDone -> kIdle       the caller collected the result.
// Every change is made under the worker's mutex, which also orders the share (caller
// to thread) and the result and output bytes (thread to caller). `state` is atomic
// only so that a caller can spin on it briefly before sleeping on `done`.
#include "ice/crypt_pool.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>

namespace iceblk::ice {
namespace {

// A caller whose own shares are done spins this long on a running share before it
// sleeps (the shares are about equal, so the other one is usually just finishing).
constexpr uint64_t kSpinNs = 10'000;

uint64_t now_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(t.tv_nsec);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

struct CryptPool::Share {
  detail::CipherLease* lease = nullptr;  // keyed for (key, dir), lent for this share
  const ProgrammedKey* key = nullptr;
  Direction dir = Direction::kEncrypt;
  Dun first{0};
  std::span<const iovec> src, dst;
  uint64_t src_off = 0, dst_off = 0, len = 0;
};

struct CryptPool::Worker {
  enum class State { kIdle, kAssigned, kRunning, kDone };
  std::mutex mu;
  std::condition_variable wake;  // the thread: a share is assigned, or stop
  std::condition_variable done;  // the caller: the share is done
  std::atomic<State> state{State::kIdle};  // changed under mu only
  bool stopping = false;                   // under mu
  Share share;                             // written by the caller in kIdle, read by the thread in kRunning
  Status result;                           // written by the thread before kDone
  CryptContext ctx;                        // the thread's own (its scratch block)
  std::thread thread;
};

CryptPool::CryptPool(const CryptPoolOptions& opt)
    : num_threads_(opt.threads),
      take_back_(opt.take_back),
      workers_(std::make_unique<Worker[]>(opt.threads)) {}

Result<std::unique_ptr<CryptPool>> CryptPool::create(const CryptPoolOptions& opt) {
  if (opt.threads == 0 || opt.threads > kMaxCryptThreads) {
    return fail(Errc::kInvalidArgument, "crypto threads must be 1..{}, not {}", kMaxCryptThreads,
                opt.threads);
  }
  std::unique_ptr<CryptPool> p(new CryptPool(opt));
  for (unsigned i = 0; i < opt.threads; ++i) {
    Worker& w = p->workers_[i];
    try {
      w.thread = std::thread([pool = p.get(), &w] { pool->run(w); });
    } catch (const std::system_error& e) {
      return fail(Errc::kIo, "cannot start crypto thread {} of {}: {}", i + 1, opt.threads,
                  e.what());  // ~CryptPool joins the ones started
    }
  }
  return p;
}

CryptPool::~CryptPool() { stop(); }

void CryptPool::stop() {
  for (unsigned i = 0; i < num_threads_; ++i) {
    Worker& w = workers_[i];
    {
      std::lock_guard lock(w.mu);
      w.stopping = true;
    }
    w.wake.notify_one();
    if (w.thread.joinable()) w.thread.join();
  }
}

void CryptPool::run(Worker& w) {
  pthread_setname_np(pthread_self(), "iceblk-crypt");  // top -H, /proc/PID/task/*/comm
  std::unique_lock lock(w.mu);
  for (;;) {
    w.wake.wait(lock, [&] { return w.stopping || w.state.load(std::memory_order_relaxed) == Worker::State::kAssigned; });
    // An assigned share runs even when stopping: its caller waits for it.
    if (w.state.load(std::memory_order_relaxed) != Worker::State::kAssigned) return;
    w.state.store(Worker::State::kRunning, std::memory_order_relaxed);
    lock.unlock();
    Status st = crypt_share(w.ctx, w.share);
    shares_by_threads_.fetch_add(1, std::memory_order_relaxed);
    lock.lock();
    w.result = std::move(st);
    w.state.store(Worker::State::kDone, std::memory_order_release);
    w.done.notify_one();
  }
}

Status CryptPool::crypt_share(CryptContext& ctx, const Share& s) {
  return ctx.crypt_leased(*s.lease, *s.key, s.dir, s.first, s.src, s.src_off, s.dst, s.dst_off,
                          s.len);
}

Status CryptPool::crypt(CryptContext& own, const ProgrammedKey& key, Direction dir, Dun first,
                        std::span<const iovec> src, uint64_t src_off, std::span<const iovec> dst,
                        uint64_t dst_off, uint64_t len) {
  const uint64_t dus = key.key.mode().data_unit_size;
  const uint64_t units = len % dus == 0 ? len / dus : 0;
  const uint64_t n = std::min<uint64_t>(
      {uint64_t{num_threads_} + 1, units, len / (kParallelCryptMinBytes / 2)});
  if (len < kParallelCryptMinBytes || n < 2) {
    return own.crypt(key, dir, first, src, src_off, dst, dst_off, len);
  }
  ICEBLK_TRY(CryptContext::check(key, first, src, src_off, dst, dst_off, len));

  // Contiguous shares of whole data units, as even as they can be.
  std::array<std::optional<detail::CipherLease>, kMaxCryptThreads + 1> leases;
  leases[0].emplace(key.cipher_cache);
  ICEBLK_TRY(leases[0]->ensure(key.key, dir));
  std::array<Share, kMaxCryptThreads + 1> shares;
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t begin = units * i / n, end = units * (i + 1) / n;
    shares[i] = Share{&*leases[0], &key, dir, Dun(first.value + begin), src, dst,
                      src_off + begin * dus, dst_off + begin * dus, (end - begin) * dus};
  }

  // Shares 1.. to the threads idle now, each with a keyed set of its own.
  std::array<Worker*, kMaxCryptThreads + 1> given{};
  unsigned next = 0;
  for (uint64_t i = 1; i < n && next < num_threads_; ++i) {
    for (; next < num_threads_; ++next) {
      Worker& w = workers_[next];
      std::unique_lock lock(w.mu, std::try_to_lock);
      if (!lock.owns_lock() || w.stopping ||
          w.state.load(std::memory_order_relaxed) != Worker::State::kIdle) {
        continue;
      }
      leases[i].emplace(key.cipher_cache);
      if (!leases[i]->ensure(key.key, dir)) {  // the caller crypts it (its set is keyed)
        leases[i].reset();
        break;
      }
      shares[i].lease = &*leases[i];
      w.share = shares[i];
      w.state.store(Worker::State::kAssigned, std::memory_order_relaxed);
      w.wake.notify_one();
      given[i] = &w;
      ++next;
      break;
    }
  }

  // The caller's own share, every share no thread took, and the ones taken back.
  std::array<Status, kMaxCryptThreads + 1> results;
  for (uint64_t i = 0; i < n; ++i) {
    if (given[i] == nullptr) results[i] = crypt_share(own, shares[i]);
  }
  for (uint64_t i = 1; i < n; ++i) {
    Worker* w = given[i];
    if (w == nullptr) continue;
    if (take_back_) {
      std::unique_lock lock(w->mu);
      if (w->state.load(std::memory_order_relaxed) == Worker::State::kAssigned) {
        w->state.store(Worker::State::kIdle, std::memory_order_relaxed);
        w->share = {};
        lock.unlock();
        results[i] = crypt_share(own, shares[i]);
        continue;
      }
    }
    const uint64_t until = now_ns() + kSpinNs;
    while (w->state.load(std::memory_order_acquire) != Worker::State::kDone && now_ns() < until) {
      for (int k = 0; k < 32; ++k) cpu_relax();
    }
    std::unique_lock lock(w->mu);
    w->done.wait(lock, [&] { return w->state.load(std::memory_order_relaxed) == Worker::State::kDone; });
    results[i] = std::move(w->result);
    w->result = Status{};
    w->share = {};
    w->state.store(Worker::State::kIdle, std::memory_order_relaxed);
  }
  for (uint64_t i = 0; i < n; ++i) {
    if (!results[i]) return std::move(results[i]);
  }
  return {};
}

}  // namespace iceblk::ice
