// Crypto threads (iceblkd --crypto-threads N, issue 13): a small, bounded pool that
// takes pieces of a large crypt call off the queue worker, so one request's data
// units are crypted on more than one core.
//
// A call of at least kParallelCryptMinBytes is cut into contiguous pieces of whole
// data units (kCryptPieceBytes each). The caller (the queue worker) hands the call to
// the pool threads that are idle, then it and they take pieces in order from one
// shared counter until none is left; the call returns when every piece is done. A
// thread that wakes up late finds fewer pieces (or none) and the caller never waits
// longer than one piece for a thread that did start. The bytes are exactly those of
// CryptContext::crypt: every data unit is crypted by the same code with its own DUN,
// only on another thread.
//
// Keys. A pool thread owns no keyed context: the caller leases one keyed CipherSet
// per helping thread from the key's own cache (detail::CipherLease on ProgrammedKey::
// cipher_cache) and lends it to the thread for this call only. So the contexts of
// the pool threads are the contexts of the key, and follow its rule: they are freed,
// and cleansed, when the last reference to the ProgrammedKey goes away after its slot
// is evicted or reprogrammed; nothing keyed stays in a pool thread between calls.
//
// Never blocking on a busy pool: a call goes only to threads that are idle when it
// starts (a thread serves one call at a time, claimed under its own mutex); a thread
// that has not started when the pieces run out is released without running. With
// every thread busy (other queues, other exports), a call runs on the caller alone,
// as with no pool. No allocation per call (fixed arrays; the key's cache grows only
// with the largest number of threads that helped one call).
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>

#include "base/result.h"
#include "base/strong_types.h"
#include "ice/engine.h"

namespace iceblk::ice {

// Crypt calls of at least this many bytes are split (bench/device measured the
// threshold: docs/benchmarks.md, "Crypto threads"; below it the hand-off costs about
// what the other core saves).
inline constexpr uint64_t kParallelCryptMinBytes = 64 * 1024;
// The pieces a split call is cut into (rounded up to whole data units).
inline constexpr uint64_t kCryptPieceBytes = 16 * 1024;
// Largest --crypto-threads: a 256 KiB chunk (blk/buffer_pool.h kCryptChunk) still
// has two pieces per thread, and the key arena (base/secret_bytes.h) holds the extra
// keyed contexts of every key.
inline constexpr unsigned kMaxCryptThreads = 8;

struct CryptPoolOptions {
  unsigned threads = 1;  // 1..kMaxCryptThreads
  // TESTING ONLY: false makes a caller take no piece itself: it waits for the threads
  // (claimed with a blocking lock), so a test knows they crypted every piece.
  bool caller_helps = true;
};

class CryptPool {
 public:
  // Starts the threads (iceblkd: before the sandbox is applied). kInvalidArgument for
  // a thread count outside 1..kMaxCryptThreads.
  static Result<std::unique_ptr<CryptPool>> create(const CryptPoolOptions& opt);
  ~CryptPool();  // stop()
  CryptPool(const CryptPool&) = delete;
  CryptPool& operator=(const CryptPool&) = delete;

  // CryptContext::crypt (scatter/gather form), with the same contract, bytes and
  // errors (checked before any piece starts). Thread-safe: any number of queue
  // workers may call it, each with its own `own` context. Calls shorter than
  // kParallelCryptMinBytes, with fewer than two pieces, when no thread is idle, or
  // after stop() run on `own` alone. On kCrypto in any piece the output is partial
  // (discard it, as with CryptContext); the error returned is the first piece's.
  Status crypt(CryptContext& own, const ProgrammedKey& key, Direction dir, Dun first,
               std::span<const iovec> src, uint64_t src_off, std::span<const iovec> dst,
               uint64_t dst_off, uint64_t len);

  // Joins the threads once their current call is done. Idempotent; crypt() keeps
  // working afterwards, on the caller alone.
  void stop();

  [[nodiscard]] unsigned threads() const { return num_threads_; }
  // Pieces crypted by the pool's threads since creation (tests, statistics).
  [[nodiscard]] uint64_t pieces_by_threads() const {
    return pieces_by_threads_.load(std::memory_order_relaxed);
  }

 private:
  struct Job;
  struct Worker;
  explicit CryptPool(const CryptPoolOptions& opt);
  void run(Worker& w);
  // Takes pieces of `job` until none is left; returns how many it crypted.
  static uint64_t work(Job& job, CryptContext& ctx, detail::CipherLease& lease);

  unsigned num_threads_;
  bool caller_helps_;
  std::unique_ptr<Worker[]> workers_;
  std::atomic<uint64_t> pieces_by_threads_{0};
};

}  // namespace iceblk::ice
