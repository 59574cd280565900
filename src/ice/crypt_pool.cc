// Crypto threads: one crypt call on several cores (crypt_pool.h).
//
// One Worker per thread, each with its own mutex. Its state goes
//   kIdle -> kAssigned   a caller claimed the idle thread and gave it its call (Job);
//   kAssigned -> kIdle   the caller released it unstarted (no piece was left);
//   kAssigned -> kRunning -> kDone   the thread took pieces until none was left;
//   kDone -> kIdle       the caller saw it finish.
// Every change is made under the worker's mutex, which also orders the job (caller to
// thread) and the pieces' output bytes (thread to caller). Pieces are handed out by
// the job's atomic counter. `state` is atomic only so that a caller can spin on it
// briefly before it sleeps on `done`.
#include "ice/crypt_pool.h"


#include <algorithm>
#include <array>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>

#include "base/cpu_relax.h"
#include "base/monotonic_clock.h"
#include "base/thread_name.h"

namespace iceblk::ice {
namespace {

// A caller with no piece left spins this long on a thread still crypting its last
// piece before it sleeps (a piece takes a few microseconds).
constexpr uint64_t kSpinNs = 10'000;
constexpr uint64_t kNoPiece = ~uint64_t{0};

}  // namespace

// One split call, on its caller's stack while any thread works on it.
struct CryptPool::Job {
  const ProgrammedKey* key = nullptr;
  Direction dir = Direction::kEncrypt;
  Dun first{0};
  std::span<const iovec> src, dst;
  uint64_t src_off = 0, dst_off = 0, len = 0;
  uint64_t unit = 0;              // data unit size
  uint64_t piece = 0;             // bytes per piece (whole units)
  uint64_t pieces = 0;            // ceil(len / piece)
  std::atomic<uint64_t> next{0};  // the next piece to take
  std::mutex error_mu;            // guards the two below (taken only on an error)
  uint64_t error_piece = kNoPiece;
  Status error;
};

struct CryptPool::Worker {
  enum class State { kIdle, kAssigned, kRunning, kDone };
  std::mutex mu;
  std::condition_variable wake;            // the thread: a job is assigned, or stop
  std::condition_variable done;            // the caller: the thread is done with the job
  std::atomic<State> state{State::kIdle};  // changed under mu only
  bool stopping = false;                   // under mu
  Job* job = nullptr;                      // set with kAssigned
  detail::CipherLease* lease = nullptr;    // keyed for the job, lent by the caller
  CryptContext ctx;                        // the thread's own (its scratch block)
  std::thread thread;
};

CryptPool::CryptPool(const CryptPoolOptions& opt)
    : num_threads_(opt.threads),
      caller_helps_(opt.caller_helps),
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

CryptPool::~CryptPool() {
  stop();
}

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
  set_thread_name("iceblk-crypt");
  std::unique_lock lock(w.mu);
  for (;;) {
    w.wake.wait(lock, [&] {
      return w.stopping || w.state.load(std::memory_order_relaxed) == Worker::State::kAssigned;
    });
    // An assigned job runs even when stopping: its caller waits for it.
    if (w.state.load(std::memory_order_relaxed) != Worker::State::kAssigned) return;
    w.state.store(Worker::State::kRunning, std::memory_order_relaxed);
    Job* job = w.job;
    detail::CipherLease* lease = w.lease;
    lock.unlock();
    const uint64_t n = work(*job, w.ctx, *lease);
    pieces_by_threads_.fetch_add(n, std::memory_order_relaxed);
    lock.lock();
    w.state.store(Worker::State::kDone, std::memory_order_release);
    w.done.notify_one();
  }
}

uint64_t CryptPool::work(Job& job, CryptContext& ctx, detail::CipherLease& lease) {
  uint64_t n = 0;
  for (;;) {
    const uint64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.pieces) return n;
    const uint64_t off = i * job.piece;
    Status st = ctx.crypt_leased(lease, *job.key, job.dir, Dun(job.first.value + off / job.unit),
                                 job.src, job.src_off + off, job.dst, job.dst_off + off,
                                 std::min(job.piece, job.len - off));
    ++n;
    if (!st) {
      std::lock_guard lock(job.error_mu);
      if (i < job.error_piece) {
        job.error_piece = i;
        job.error = std::move(st);
      }
    }
  }
}

Status CryptPool::crypt(CryptContext& own, const ProgrammedKey& key, Direction dir, Dun first,
                        std::span<const iovec> src, uint64_t src_off, std::span<const iovec> dst,
                        uint64_t dst_off, uint64_t len) {
  const uint64_t unit = key.key.mode().data_unit_size;
  const uint64_t piece = std::max(unit, kCryptPieceBytes / unit * unit);
  const uint64_t pieces = len % unit == 0 ? (len + piece - 1) / piece : 0;
  if (len < kParallelCryptMinBytes || pieces < 2) {
    return own.crypt(key, dir, first, src, src_off, dst, dst_off, len);
  }
  ICEBLK_TRY(CryptContext::check(key, first, src, src_off, dst, dst_off, len));
  // The caller's set first: once a thread has the job, nothing returns before it is done.
  detail::CipherLease own_lease(key.cipher_cache);
  ICEBLK_TRY(own_lease.ensure(key.key, dir));

  Job job;
  job.key = &key;
  job.dir = dir;
  job.first = first;
  job.src = src;
  job.dst = dst;
  job.src_off = src_off;
  job.dst_off = dst_off;
  job.len = len;
  job.unit = unit;
  job.piece = piece;
  job.pieces = pieces;

  // The job to the threads idle now (at most one per piece beyond the caller's),
  // each with a keyed set of its own.
  std::array<std::optional<detail::CipherLease>, kMaxCryptThreads> leases;
  std::array<Worker*, kMaxCryptThreads> given{};
  const uint64_t want = std::min<uint64_t>(num_threads_, caller_helps_ ? pieces - 1 : pieces);
  unsigned helpers = 0;
  for (unsigned t = 0; t < num_threads_ && helpers < want; ++t) {
    Worker& w = workers_[t];
    std::unique_lock lock(w.mu, std::defer_lock);
    if (caller_helps_) {
      if (!lock.try_lock()) continue;  // busy with another call
    } else {
      lock.lock();
    }
    if (w.stopping || w.state.load(std::memory_order_relaxed) != Worker::State::kIdle) continue;
    detail::CipherLease& lease = leases[helpers].emplace(key.cipher_cache);
    if (!lease.ensure(key.key, dir)) {  // the caller's set is keyed: it does the pieces
      leases[helpers].reset();
      break;
    }
    w.job = &job;
    w.lease = &lease;
    w.state.store(Worker::State::kAssigned, std::memory_order_relaxed);
    w.wake.notify_one();
    given[helpers++] = &w;
  }

  if (caller_helps_ || helpers == 0) (void)work(job, own, own_lease);

  // Every piece is taken. A thread that has not started is released; one that has
  // is finishing its last piece.
  for (unsigned h = 0; h < helpers; ++h) {
    Worker& w = *given[h];
    if (caller_helps_) {
      std::lock_guard lock(w.mu);
      if (w.state.load(std::memory_order_relaxed) == Worker::State::kAssigned) {
        w.state.store(Worker::State::kIdle, std::memory_order_relaxed);
        w.job = nullptr;
        w.lease = nullptr;
        continue;
      }
    }
    const uint64_t until = monotonic_ns() + kSpinNs;
    while (w.state.load(std::memory_order_acquire) != Worker::State::kDone && monotonic_ns() < until) {
      for (int k = 0; k < 32; ++k) cpu_relax();
    }
    std::unique_lock lock(w.mu);
    w.done.wait(lock,
                [&] { return w.state.load(std::memory_order_relaxed) == Worker::State::kDone; });
    w.state.store(Worker::State::kIdle, std::memory_order_relaxed);
    w.job = nullptr;
    w.lease = nullptr;
  }
  if (job.error_piece != kNoPiece) return std::move(job.error);  // every thread is done
  return {};
}

}  // namespace iceblk::ice
