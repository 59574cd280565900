// Crypto threads (iceblkd --crypto-threads N, issue 13): a small, bounded pool that
// takes shares of a large crypt call off the queue worker, so one request's data
// units are crypted on more than one core.
//
// A call of at least kParallelCryptMinBytes is split into contiguous shares of data
// units: the caller (the queue worker) crypts share 0 on its own CryptContext, each
// idle pool thread one of the others, and the call returns when every share is done.
// The bytes are exactly those of CryptContext::crypt: every data unit is crypted by
// the same code with its own DUN, only on another thread.
//
// Keys. A pool thread owns no keyed context: the caller leases one keyed CipherSet
// per share from the key's own cache (detail::CipherLease on ProgrammedKey::
// cipher_cache) and lends it to the thread for that share only. So the contexts of
// the pool threads are the contexts of the key, and follow its rule: they are freed,
// and cleansed, when the last reference to the ProgrammedKey goes away after its slot
// is evicted or reprogrammed; nothing keyed stays in a pool thread between calls.
//
// Never blocking on a busy pool: a share goes only to a thread that is idle when the
// call starts (a thread serves one share at a time, claimed under its own mutex), and
// a share its thread has not started when the caller is done with its own is taken
// back and crypted by the caller. With every thread busy (other queues, other
// exports), a call runs on the caller alone, as with no pool. No allocation per call
// (fixed arrays; the key's cache grows only with the largest split).
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

// Crypt calls of at least this many bytes are split (and each share is at least half
// of it). bench/device measured the gain from 64 KiB up (docs/benchmarks.md,
// "Crypto threads"); below that the hand-off costs about what the share saves.
inline constexpr uint64_t kParallelCryptMinBytes = 64 * 1024;
// Largest --crypto-threads: a share of a 256 KiB chunk (blk/buffer_pool.h kCryptChunk)
// is then still 32 KiB, and the key arena (base/secret_bytes.h) holds the extra keyed
// contexts of every key.
inline constexpr unsigned kMaxCryptThreads = 8;

struct CryptPoolOptions {
  unsigned threads = 1;  // 1..kMaxCryptThreads
  // TESTING ONLY: false makes a caller wait for every share it handed out instead of
  // taking back the ones not started yet, so a test knows the pool threads ran them.
  bool take_back = true;
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
  // errors (checked before any share starts). Thread-safe: any number of queue
  // workers may call it, each with its own `own` context. Calls shorter than
  // kParallelCryptMinBytes, with fewer than two data units, when no thread is idle, or
  // after stop() run on `own` alone. On kCrypto in any share the output is partial
  // (discard it, as with CryptContext); the error returned is the first share's.
  Status crypt(CryptContext& own, const ProgrammedKey& key, Direction dir, Dun first,
               std::span<const iovec> src, uint64_t src_off, std::span<const iovec> dst,
               uint64_t dst_off, uint64_t len);

  // Joins the threads once their current share is done. Idempotent; crypt() keeps
  // working afterwards, on the caller alone.
  void stop();

  [[nodiscard]] unsigned threads() const { return num_threads_; }
  // Shares crypted by the pool's threads since creation (tests, statistics).
  [[nodiscard]] uint64_t shares_by_threads() const {
    return shares_by_threads_.load(std::memory_order_relaxed);
  }

 private:
  struct Share;
  struct Worker;
  explicit CryptPool(const CryptPoolOptions& opt);
  void run(Worker& w);
  static Status crypt_share(CryptContext& ctx, const Share& s);

  unsigned num_threads_;
  bool take_back_;
  std::unique_ptr<Worker[]> workers_;
  std::atomic<uint64_t> shares_by_threads_{0};
};

}  // namespace iceblk::ice
