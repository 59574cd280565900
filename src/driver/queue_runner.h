// One virtqueue of the driver library: its ring (virtio::DriverQueue), eventfds,
// the pool of request contexts with their buffer layout, and the completion thread.
//
// Buffer layout of a request (one context per possible in-flight chain):
//   block   kBlockSize bytes per context, allocated once: the header (when it fits,
//           kInlineHeaderMax) and the status byte at kStatusOffset;
//   header  allocated per request only for larger (raw) headers;
//   data    out bytes followed by in bytes, allocated per request.
// Descriptors: header | out segments (<= max_seg each) | in segments | status.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "iceblk/device.h"
#include "iceblk/keyslot_manager.h"
#include "virtio/driver_queue.h"

namespace iceblk::driver {

// The driver memory shared by every queue, with waiting allocation: free() wakes
// the submitters that wait for room (no polling).
class BufferPool {
 public:
  explicit BufferPool(std::shared_ptr<virtio::DriverMemory> mem) : mem_(std::move(mem)) {}
  // kBusy when full and `wait` is false; otherwise waits for a free().
  Result<GuestAddr> alloc(uint64_t size, uint64_t align, bool wait);
  void free(GuestAddr a);
  // Wake waiters after memory was freed elsewhere (indirect tables, by the ring).
  void notify();
  [[nodiscard]] virtio::DriverMemory& memory() const { return *mem_; }
  [[nodiscard]] const std::shared_ptr<virtio::DriverMemory>& memory_ptr() const { return mem_; }

 private:
  std::shared_ptr<virtio::DriverMemory> mem_;
  std::mutex mu_;
  std::condition_variable cv_;
};

// The waiting side of one synchronous request (Device's sync wrappers). The
// completion thread hands it the device-written bytes and the result; the caller
// waits with a deadline. After a timeout the request is abandoned: a late
// completion copies nothing into the caller's (by then maybe gone) buffer. Shared
// by both sides, so whichever finishes last frees it.
class SyncWaiter {
 public:
  explicit SyncWaiter(std::span<uint8_t> in_dst) : in_dst_(in_dst) {}
  // Completion thread: copy the in bytes to the caller's buffer unless abandoned.
  void deliver_in(std::span<const uint8_t> in);
  void complete(Result<RawResult> r);
  // Caller: the result, or nullopt after `timeout` (0 = no limit), now abandoned.
  std::optional<Result<RawResult>> wait(std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::span<uint8_t> in_dst_;
  bool abandoned_ = false;
  std::optional<Result<RawResult>> result_;
};

// A request as it goes on the ring.
struct RingRequest {
  std::span<const uint8_t> header;
  std::span<const uint8_t> out;
  std::span<uint8_t> in;
  bool secret = false;  // zeroise the driver buffers after completion
  KeyslotManager::Lease lease;
  RawCallback cb;
  // Set (instead of cb) by synchronous calls: `in` goes through the waiter.
  std::shared_ptr<SyncWaiter> waiter;
};

class QueueRunner {
 public:
  struct Options {
    uint16_t index = 0;
    uint16_t size = 0;
    CompletionMode mode = CompletionMode::kInterrupt;
    bool event_idx = false;
    bool indirect = false;
    uint32_t max_seg = 0;
    int conn_fd = -1;  // the vhost-user socket: a hang-up fails every request
  };
  // Allocates the ring and the contexts; start() launches the completion thread.
  static Result<std::unique_ptr<QueueRunner>> create(BufferPool& pool, const Options& o);
  ~QueueRunner();  // stops the thread; frees the contexts' blocks
  QueueRunner(const QueueRunner&) = delete;
  QueueRunner& operator=(const QueueRunner&) = delete;

  [[nodiscard]] const virtio::DriverQueue& ring() const { return *ring_; }
  [[nodiscard]] int kick_fd() const { return kick_.get(); }
  [[nodiscard]] int call_fd() const { return call_.get(); }
  void start();
  void stop();  // joins the completion thread

  // Puts a request on the ring, waiting for a context, ring space or memory when
  // `may_wait` (false on any completion thread: kBusy instead). On error `r.cb` is
  // not called.
  Status submit(RingRequest r, bool may_wait);
  // Fails every request in flight with `e` (and every later submit).
  void fail_all(const Error& e);
  // Waits until nothing is in flight.
  void drain();

  [[nodiscard]] bool is_completion_thread() const { return thread_id_.load() == std::this_thread::get_id(); }
  [[nodiscard]] QueueStats stats() const;

 private:
  struct InFlight;
  QueueRunner(BufferPool& pool, const Options& o);
  void run();
  void reap();
  void finish(InFlight* c, Result<RawResult> r);
  // Returns c's slot; settled = false leaves it counted in flight (finish() settles
  // it after the callback).
  void give_back(InFlight* c, bool settled = true);

  BufferPool& pool_;
  const Options o_;
  std::unique_ptr<virtio::DriverQueue> ring_;
  UniqueFd kick_, call_, stop_;

  std::mutex mu_;
  std::condition_variable cv_;  // a completion happened (context, ring space, drain)
  std::vector<InFlight*> by_head_;
  std::vector<std::unique_ptr<InFlight>> in_flight_pool_;
  std::vector<InFlight*> free_;
  size_t in_flight_ = 0;
  std::optional<Error> dead_;  // the back-end went away
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_{};
  std::atomic<uint64_t> submitted_{0}, completed_{0}, kicks_{0}, interrupts_{0};
};

// eventfd helpers shared by the set-up code.
Result<UniqueFd> make_eventfd();
void signal_fd(int fd);

}  // namespace iceblk::driver
