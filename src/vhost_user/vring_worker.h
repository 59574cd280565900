// One thread per started vring: waits (epoll) on the kick eventfd, the device's
// queue event fd and an internal control eventfd, runs Backend::process_queue and
// signals the call eventfd when the device asks for it (once per pass).
//
// Poisoned guest memory (SplitQueue::poisoned(): a contained SIGBUS, the front-end
// shrank its memory file): checked before and after every pass. The worker then
// drains the queue (the device fails the in-flight requests), stops calling the
// device, and signals `poisoned_fd` so that the session closes the connection.
//
// Polling (Backend::poll_us() > 0, iceblkd --poll-us): after a pass the worker
// suppresses the driver's kicks and spins on the ring and the fds for up to that
// long; then it re-enables kicks, re-checks the ring (so a chain published in
// between is not left waiting for a kick that the driver did not send) and sleeps.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "base/result.h"
#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "vhost_user/backend.h"
#include "virtio/split_queue.h"

namespace iceblk::vhost_user {

// The call and error eventfds of one vring. The front-end may replace them at any
// time (QEMU swaps the call fd while the ring runs), so the session and the worker
// share this object; the mutex makes a swap and a signal never overlap (a signal
// after the swap goes to the new fd; the old fd is closed only when no one uses it).
class VringNotifier {
 public:
  void set_call(UniqueFd fd);
  void set_err(UniqueFd fd);
  void signal_call();
  void signal_err();
  [[nodiscard]] bool has_call() const;

 private:
  mutable std::mutex mu_;
  UniqueFd call_;
  UniqueFd err_;
};

class VringWorker {
 public:
  // Spawns the worker thread. `notifier` and `device` must outlive the worker, and
  // so must `poisoned_fd` (an eventfd written when the queue's memory is poisoned;
  // -1 = none).
  static Result<std::unique_ptr<VringWorker>> start(uint16_t index, Backend& device,
                                                    virtio::SplitQueue queue, UniqueFd kick,
                                                    VringNotifier& notifier, bool enabled,
                                                    int poisoned_fd = -1);
  ~VringWorker();  // stop()
  VringWorker(const VringWorker&) = delete;
  VringWorker& operator=(const VringWorker&) = delete;

  // Ask the thread to drain (Backend::drain_queue) and exit; join it. Returns the
  // next available index the back-end would process (for GET_VRING_BASE).
  // Idempotent.
  uint16_t stop();

  // Thread-safe; takes effect before the worker's next processing pass.
  void set_enabled(bool enabled);
  void set_memory(std::shared_ptr<const memory::GuestMemory> mem);

  // True once process_queue (or a memory update) failed and the queue was parked,
  // or its memory was poisoned.
  [[nodiscard]] bool broken() const;
  // True once the queue stopped because its memory was poisoned.
  [[nodiscard]] bool poisoned() const;

  // Test seam: called on the worker thread when a poll window ended with nothing
  // found, before kicks are re-enabled (the window the lost-kick test aims at).
  // Process-wide; nullptr (the default) = none.
  using PollTimeoutHook = void (*)(uint16_t queue_index);
  static void set_poll_timeout_hook_for_testing(PollTimeoutHook hook);

 private:
  VringWorker(uint16_t index, Backend& device, virtio::SplitQueue queue, UniqueFd kick,
              VringNotifier& notifier, bool enabled, UniqueFd ctl, int poisoned_fd)
      : index_(index),
        device_(device),
        queue_(std::move(queue)),
        kick_(std::move(kick)),
        notifier_(notifier),
        ctl_(std::move(ctl)),
        poisoned_fd_(poisoned_fd),
        enabled_(enabled) {}
  void run();
  void wake();
  // Polling: spin for work for up to poll_us, then sleep; returns epoll_wait's
  // result (events in evs) and sets ring_work when the avail ring has chains.
  int wait_polling(int ep, epoll_event* evs, int max_events, uint32_t poll_us, bool& ring_work);

  const uint16_t index_;
  Backend& device_;
  virtio::SplitQueue queue_;  // touched only by the worker thread while it runs
  UniqueFd kick_;
  VringNotifier& notifier_;
  UniqueFd ctl_;  // eventfd: stop / enable / memory changes
  const int poisoned_fd_;

  mutable std::mutex mu_;
  bool stop_requested_ = false;
  bool enabled_;
  bool broken_ = false;
  bool poisoned_ = false;
  std::shared_ptr<const memory::GuestMemory> pending_mem_;
  uint16_t final_next_avail_ = 0;

  std::thread thread_;
  bool joined_ = false;
};

}  // namespace iceblk::vhost_user
