#include "blk/completion_hold.h"

#include <sys/epoll.h>
#include <sys/timerfd.h>

#include <cerrno>
#include <charconv>
#include <string>

namespace iceblk::blk {

Result<CompletionHoldConfig> parse_completion_hold(std::string_view text) {
  CompletionHoldConfig c;
  uint32_t* fields[] = {&c.every, &c.release_after, &c.max_ms};
  size_t n = 0;
  std::string_view rest = text;
  for (;;) {
    const size_t colon = rest.find(':');
    const std::string_view part = rest.substr(0, colon);
    if (n == 3)
      return fail(Errc::kInvalidArgument, "--test-reorder-completions '{}': at most 3 fields",
                  text);
    const auto r = std::from_chars(part.data(), part.data() + part.size(), *fields[n]);
    if (part.empty() || r.ec != std::errc() || r.ptr != part.data() + part.size()) {
      return fail(
          Errc::kInvalidArgument,
          "--test-reorder-completions '{}': expected EVERY[:RELEASE_AFTER[:MAX_MS]] (numbers)",
          text);
    }
    ++n;
    if (colon == std::string_view::npos) break;
    rest = rest.substr(colon + 1);
  }
  if (c.every == 0)
    return fail(Errc::kInvalidArgument, "--test-reorder-completions '{}': EVERY must be >= 1",
                text);
  if (c.release_after == 0) {
    return fail(Errc::kInvalidArgument,
                "--test-reorder-completions '{}': RELEASE_AFTER must be >= 1", text);
  }
  return c;
}

Result<CompletionHold> CompletionHold::create(const CompletionHoldConfig& cfg, int io_fd) {
  CompletionHold h;
  h.cfg_ = cfg;
  h.ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!h.ep_)
    return tl::unexpected(errno_error(Errc::kIo, "completion hold: epoll_create1", errno));
  h.timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!h.timer_)
    return tl::unexpected(errno_error(Errc::kIo, "completion hold: timerfd_create", errno));
  for (int fd : {io_fd, h.timer_.get()}) {
    if (fd < 0) continue;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(h.ep_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return tl::unexpected(errno_error(Errc::kIo, "completion hold: epoll_ctl", errno));
    }
  }
  return h;
}

bool CompletionHold::hold(uint16_t head, uint32_t used_len) {
  if ((seen_++ % cfg_.every) != 0) return false;
  const auto deadline = cfg_.max_ms == 0 ? Clock::time_point::max()
                                         : Clock::now() + std::chrono::milliseconds(cfg_.max_ms);
  held_.push_back(Held{head, used_len, pushed_ + cfg_.release_after, deadline});
  arm_timer();
  return true;
}

void CompletionHold::pushed() {
  ++pushed_;
}

void CompletionHold::arm_timer() {
  // Oneshot at the earliest deadline (held_ is in hold order, deadlines ascend).
  itimerspec its{};
  if (!held_.empty() && held_.front().deadline != Clock::time_point::max()) {
    auto left = held_.front().deadline - Clock::now();
    if (left < std::chrono::microseconds(1)) left = std::chrono::microseconds(1);
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    its.it_value.tv_sec = ns / 1000000000;
    its.it_value.tv_nsec = ns % 1000000000;
  }
  ::timerfd_settime(timer_.get(), 0, &its, nullptr);
}

void CompletionHold::release(const std::function<void(uint16_t, uint32_t)>& push, bool all) {
  uint64_t expirations;
  (void)!::read(timer_.get(), &expirations, sizeof expirations);  // non-blocking: clear
  const auto now = Clock::now();
  bool any = false;
  // Held completions are released in the order they were held; pushing one counts
  // towards the next only through later, normal completions.
  while (!held_.empty()) {
    const Held& h = held_.front();
    if (!all && pushed_ < h.release_at_count && now < h.deadline) break;
    const Held out = h;
    held_.pop_front();
    push(out.head, out.used_len);
    any = true;
  }
  if (any || !held_.empty()) arm_timer();
}

}  // namespace iceblk::blk
