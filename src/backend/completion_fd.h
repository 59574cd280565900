// The completion_fd() of a remote backend's queue (NBD, RBD): an epoll fd over
// an eventfd, which other threads (or callbacks run outside reap()) signal when
// they have recorded a completion, and a timerfd that ticks every kTick while
// the queue waits on time (request deadlines, reconnects). A backend may watch
// more fds in it (NBD: its socket).
#pragma once

#include <sys/epoll.h>

#include <chrono>
#include <cstdint>
#include <string_view>

#include "base/result.h"
#include "base/unique_fd.h"

namespace iceblk::backend {

class CompletionFd {
 public:
  // Period of the timer while ticking: how late a deadline may be noticed.
  static constexpr std::chrono::milliseconds kTick{100};

  static Result<CompletionFd> create(std::string_view what);

  [[nodiscard]] int fd() const { return ep_.get(); }
  // Makes fd() readable. Thread-safe.
  void signal() const;
  // Adds (EPOLL_CTL_ADD) or changes (EPOLL_CTL_MOD) a watched fd.
  bool watch(int fd, uint32_t events, int op);
  void unwatch(int fd);
  // Starts or stops the timer's ticks (cheap when unchanged).
  void set_ticking(bool on);

  // Waits up to timeout_ms for any of the fds, consumes the eventfd and the
  // timerfd, and calls on_fd(fd, events) for every other watched fd that is
  // ready. Returns whether the timer ticked.
  template <class OnFd>
  bool wait(int timeout_ms, OnFd&& on_fd) {
    epoll_event evs[4];
    const int n = ::epoll_wait(ep_.get(), evs, 4, timeout_ms);
    bool ticked = false;
    for (int i = 0; i < n; ++i) {
      const int fd = evs[i].data.fd;
      if (fd == efd_.get() || fd == tfd_.get()) {
        ticked = consume(fd) || ticked;
      } else {
        on_fd(fd, evs[i].events);
      }
    }
    return ticked;
  }
  bool wait(int timeout_ms) {
    return wait(timeout_ms, [](int, uint32_t) {});
  }

 private:
  bool consume(int fd);  // true for the timerfd

  UniqueFd ep_, efd_, tfd_;
  bool ticking_ = false;
};

}  // namespace iceblk::backend
