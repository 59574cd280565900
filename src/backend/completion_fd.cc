#include "backend/completion_fd.h"

#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace iceblk::backend {

Result<CompletionFd> CompletionFd::create(std::string_view what) {
  CompletionFd c;
  c.ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
  c.efd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  c.tfd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!c.ep_ || !c.efd_ || !c.tfd_)
    return fail(errno_error(Errc::kIo, fmt::format("{}: fds", what), errno));
  if (!c.watch(c.efd_.get(), EPOLLIN, EPOLL_CTL_ADD) ||
      !c.watch(c.tfd_.get(), EPOLLIN, EPOLL_CTL_ADD)) {
    return fail(errno_error(Errc::kIo, fmt::format("{}: epoll_ctl", what), errno));
  }
  return c;
}

void CompletionFd::signal() const {
  const uint64_t one = 1;
  (void)!::write(efd_.get(), &one, sizeof one);
}

bool CompletionFd::watch(int fd, uint32_t events, int op) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  return ::epoll_ctl(ep_.get(), op, fd, &ev) == 0;
}

void CompletionFd::unwatch(int fd) {
  ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

void CompletionFd::set_ticking(bool on) {
  if (on == ticking_) return;
  itimerspec its{};
  if (on) {
    its.it_value.tv_nsec = std::chrono::nanoseconds(kTick).count();
    its.it_interval = its.it_value;
  }
  ::timerfd_settime(tfd_.get(), 0, &its, nullptr);
  ticking_ = on;
}

bool CompletionFd::consume(int fd) {
  uint64_t v;
  (void)!::read(fd, &v, sizeof v);
  return fd == tfd_.get();
}

}  // namespace iceblk::backend
