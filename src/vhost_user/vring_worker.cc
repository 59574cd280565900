#include "vhost_user/vring_worker.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <atomic>
#include <cerrno>
#include <chrono>

#include "base/cpu_relax.h"
#include "base/log.h"
#include "base/log_context.h"
#include "base/thread_name.h"

namespace iceblk::vhost_user {

namespace {

void write_eventfd(int fd) {
  if (fd < 0) return;
  const uint64_t one = 1;
  // A full eventfd counter (EAGAIN) already means "signalled"; nothing else to do.
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

enum Tag : uint64_t { kTagKick = 0, kTagCtl = 1, kTagDevice = 2 };

std::atomic<VringWorker::PollTimeoutHook> g_poll_timeout_hook{nullptr};

}  // namespace

void VringWorker::set_poll_timeout_hook_for_testing(PollTimeoutHook hook) {
  g_poll_timeout_hook.store(hook);
}

int VringWorker::wait_polling(int ep, epoll_event* evs, int max_events, uint32_t poll_us,
                              bool& ring_work) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::microseconds(poll_us);
  // The driver need not kick while we look at its ring ourselves.
  queue_.disable_notifications();
  for (;;) {
    // Poisoned (a look at the ring faulted): the pass stops the queue.
    if (queue_.has_available() || queue_.poisoned()) {
      ring_work = true;  // process_queue re-enables kicks before it returns
      return 0;
    }
    // Kick, control (stop, enable, memory) and device completion fds, not waiting.
    if (const int n = ::epoll_wait(ep, evs, max_events, 0); n != 0) return n;
    if (Clock::now() >= deadline) break;
    cpu_relax();
  }
  if (auto hook = g_poll_timeout_hook.load()) hook(index_);
  // ORDER: enable_notifications() ends with a full fence before this re-check; the
  // driver fences between storing avail->idx and reading the suppression. A chain
  // published after the last look above is seen here, or the driver saw kicks on
  // and kicked (the kick fd wakes the epoll_wait below).
  queue_.enable_notifications();
  if (queue_.has_available()) {
    ring_work = true;
    return 0;
  }
  return ::epoll_wait(ep, evs, max_events, -1);
}

void VringNotifier::set_call(UniqueFd fd) {
  std::lock_guard lk(mu_);
  call_ = std::move(fd);
}
void VringNotifier::set_err(UniqueFd fd) {
  std::lock_guard lk(mu_);
  err_ = std::move(fd);
}
void VringNotifier::signal_call() {
  std::lock_guard lk(mu_);
  write_eventfd(call_.get());
}
void VringNotifier::signal_err() {
  std::lock_guard lk(mu_);
  write_eventfd(err_.get());
}
bool VringNotifier::has_call() const {
  std::lock_guard lk(mu_);
  return call_.valid();
}

Result<std::unique_ptr<VringWorker>> VringWorker::start(uint16_t index, Backend& device,
                                                        virtio::SplitQueue queue, UniqueFd kick,
                                                        VringNotifier& notifier, bool enabled,
                                                        int poisoned_fd) {
  UniqueFd ctl(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ctl) return tl::unexpected(errno_error(Errc::kIo, "eventfd", errno));
  std::unique_ptr<VringWorker> w(new VringWorker(index, device, std::move(queue), std::move(kick),
                                                 notifier, enabled, std::move(ctl), poisoned_fd));
  w->thread_ = std::thread([p = w.get(), ctx = log::thread_context(), index] {
    log::thread_context() = ctx;  // log records name the export and the queue
    log::thread_context().queue = index;
    set_thread_name(vring_worker_thread_name(ctx.export_name, index));
    p->run();
  });
  return w;
}

VringWorker::~VringWorker() { stop(); }

void VringWorker::wake() { write_eventfd(ctl_.get()); }

uint16_t VringWorker::stop() {
  if (!joined_) {
    {
      std::lock_guard lk(mu_);
      stop_requested_ = true;
    }
    wake();
    if (thread_.joinable()) thread_.join();
    joined_ = true;
  }
  std::lock_guard lk(mu_);
  return final_next_avail_;
}

void VringWorker::set_enabled(bool enabled) {
  {
    std::lock_guard lk(mu_);
    enabled_ = enabled;
  }
  wake();
}

void VringWorker::set_memory(std::shared_ptr<const memory::GuestMemory> mem) {
  {
    std::lock_guard lk(mu_);
    pending_mem_ = std::move(mem);
  }
  wake();
}

bool VringWorker::broken() const {
  std::lock_guard lk(mu_);
  return broken_;
}

bool VringWorker::poisoned() const {
  std::lock_guard lk(mu_);
  return poisoned_;
}

void VringWorker::run() {
  const Status started = device_.queue_started(index_);
  const int dev_fd = started ? device_.queue_event_fd(index_) : -1;

  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  auto add = [&](int fd, Tag tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  };
  const bool setup_ok =
      ep && add(ctl_.get(), kTagCtl) && add(kick_.get(), kTagKick) && (dev_fd < 0 || add(dev_fd, kTagDevice));
  const int setup_errno = errno;

  bool broken = false;
  auto park = [&](const Error& e, std::string_view what) {
    spdlog::warn("vring {}: {} failed, queue parked until it is restarted: {}", index_, what, e.to_string());
    broken = true;
    {
      std::lock_guard lk(mu_);
      broken_ = true;
    }
    // Stop watching the device fd: nobody will consume its events any more.
    if (ep && dev_fd >= 0) ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, dev_fd, nullptr);
    notifier_.signal_err();
  };
  bool enabled;
  {
    std::lock_guard lk(mu_);
    enabled = enabled_;
  }
  // TRUST: a contained SIGBUS (the front-end shrank its memory file) poisoned the
  // queue's memory: fail what is in flight (the device refuses to submit or complete
  // requests on poisoned memory), never touch the ring again, and have the session
  // close the connection. True when the queue stopped.
  auto stop_if_poisoned = [&] {
    if (broken || !queue_.poisoned()) return false;
    const std::string& name = log::thread_context().export_name;
    spdlog::warn(
        "export {} vring {}: guest memory faulted (SIGBUS contained: the front-end shrank its "
        "memory file under the device); failing the in-flight requests and closing the "
        "connection",
        name.empty() ? std::string("-") : name, index_);
    if (device_.drain_queue(index_, queue_)) notifier_.signal_call();
    broken = true;
    {
      std::lock_guard lk(mu_);
      broken_ = true;
      poisoned_ = true;
    }
    if (ep && dev_fd >= 0) ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, dev_fd, nullptr);
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, kick_.get(), nullptr);
    write_eventfd(poisoned_fd_);
    return true;
  };
  const uint32_t poll_us = device_.poll_us();
  bool more = false;  // the last pass stopped at its budget with chains left
  auto pass = [&] {
    more = false;
    if (broken || stop_if_poisoned()) return;
    // At most one ring's worth of chains per pass (SplitQueue::set_pass_budget), so
    // the control fd (stop, enable, memory) is looked at between passes.
    queue_.set_pass_budget(queue_.size());
    auto r = device_.process_queue(index_, queue_);
    more = queue_.budget_spent();
    // Poisoned during the pass: whatever the pass made of the zero pages, stop.
    if (stop_if_poisoned()) return;
    if (!r) return park(r.error(), "process_queue");
    // Polling next: suppress kicks before the call fd wakes the driver. The woken
    // driver often runs at once (preempting this thread) and submits its next request;
    // process_queue ended with kicks on, so it would kick for every request.
    if (poll_us > 0 && enabled) queue_.disable_notifications();
    if (*r) notifier_.signal_call();
  };

  auto wait_for_stop = [&] {
    for (;;) {
      {
        std::lock_guard lk(mu_);
        if (stop_requested_) return;
      }
      pollfd p{ctl_.get(), POLLIN, 0};
      ::poll(&p, 1, -1);
      uint64_t v;
      [[maybe_unused]] ssize_t r = ::read(ctl_.get(), &v, sizeof v);
    }
  };

  if (!started) {
    park(started.error(), "queue_started");
    wait_for_stop();
  } else if (!setup_ok) {
    park(errno_error(Errc::kIo, "epoll setup", setup_errno), "start");
    wait_for_stop();
  } else {
    // Front-ends need not kick after SET_VRING_KICK (newest spec): look once now.
    if (enabled) pass();
    for (;;) {
      epoll_event evs[3];
      bool ring_work = false;  // polling found chains in the avail ring
      // Chains left over from a pass that spent its budget: look at the fds without
      // sleeping, then run the next pass.
      const bool resume = more && enabled && !broken;
      const int n = resume ? ::epoll_wait(ep.get(), evs, 3, 0)
                    : poll_us > 0 && enabled && !broken
                        ? wait_polling(ep.get(), evs, 3, poll_us, ring_work)
                        : ::epoll_wait(ep.get(), evs, 3, -1);
      if (n < 0 && errno != EINTR) {
        park(errno_error(Errc::kIo, "epoll_wait", errno), "wait");
        wait_for_stop();
        break;
      }
      bool kicked = ring_work || resume;
      bool device_event = false;
      for (int i = 0; i < n; ++i) {
        uint64_t v = 0;
        if (evs[i].data.u64 == kTagKick) {
          if (::read(kick_.get(), &v, sizeof v) == 0) {
            // A pipe-style kick fd whose writer went away: stop watching it.
            ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, kick_.get(), nullptr);
          } else {
            kicked = true;
          }
        } else if (evs[i].data.u64 == kTagCtl) {
          [[maybe_unused]] ssize_t r = ::read(ctl_.get(), &v, sizeof v);
        } else {
          device_event = true;
        }
      }
      std::shared_ptr<const memory::GuestMemory> mem;
      const bool was_enabled = enabled;
      {
        std::lock_guard lk(mu_);
        if (stop_requested_) break;
        mem = std::move(pending_mem_);
        pending_mem_.reset();
        enabled = enabled_;
      }
      if (mem && !broken) {
        auto r = queue_.set_memory(std::move(mem));
        if (!r) park(r.error(), "memory table update");
      }
      // Disabled rings are not processed on kicks (the kick is consumed; enabling
      // later triggers a pass), but device completions are always handled so
      // in-flight requests finish.
      if ((enabled && (kicked || !was_enabled)) || device_event) pass();
    }
  }

  if (!broken && device_.drain_queue(index_, queue_)) notifier_.signal_call();
  device_.queue_stopped(index_);
  std::lock_guard lk(mu_);
  final_next_avail_ = queue_.next_avail();
}

}  // namespace iceblk::vhost_user
