// FAULT INJECTION, FOR TESTING ONLY (iceblkd --test-reorder-completions, config field
// "test_hold"; docs/iceblkd.md): holds back chosen completions so that requests
// complete out of order, which is what makes a daemon crash dangerous for a
// front-end that resumes each ring at its used index (issue 15). Off unless
// configured; a production daemon never constructs one.
//
// Policy: every `every`-th completion of a queue (the 1st, the (every+1)-th, ...) is
// not pushed to the used ring. It is pushed once `release_after` later completions of
// that queue have been pushed, or `max_ms` milliseconds after it was held (0 = no
// time limit), whichever comes first. The status byte and the data are already in
// guest memory when a completion is held: only the used-ring entry waits.
//
// Owned and used by one queue's worker thread (QueueProcessor).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <string_view>

#include "base/result.h"
#include "base/unique_fd.h"

namespace iceblk::blk {

struct CompletionHoldConfig {
  uint32_t every = 0;          // 0 = off
  uint32_t release_after = 1;  // later completions before a held one is pushed
  uint32_t max_ms = 0;         // 0 = no time limit

  [[nodiscard]] bool enabled() const { return every != 0; }
};

// "EVERY[:RELEASE_AFTER[:MAX_MS]]", e.g. "16:8:200". Errors name the option.
Result<CompletionHoldConfig> parse_completion_hold(std::string_view text);

class CompletionHold {
 public:
  // io_fd: the backend's completion eventfd (-1 = none). event_fd() then reports it
  // and the hold's own timer together (an epoll fd).
  static Result<CompletionHold> create(const CompletionHoldConfig& cfg, int io_fd);

  // The fd the queue worker waits on instead of io_fd.
  [[nodiscard]] int event_fd() const { return ep_.get(); }

  // Called for every completion about to be pushed. True: it is held (do not push).
  bool hold(uint16_t head, uint32_t used_len);
  // Called after a completion was pushed: counts towards releasing held ones.
  void pushed();
  // Push (via `push`) the held completions that are due; all of them with `all`.
  void release(const std::function<void(uint16_t head, uint32_t used_len)>& push, bool all = false);
  [[nodiscard]] size_t held() const { return held_.size(); }

  CompletionHold(CompletionHold&&) noexcept = default;
  CompletionHold& operator=(CompletionHold&&) noexcept = default;

 private:
  using Clock = std::chrono::steady_clock;
  struct Held {
    uint16_t head;
    uint32_t used_len;
    uint64_t release_at_count;  // pushed_ value at which it is due
    Clock::time_point deadline;
  };
  CompletionHold() = default;
  void arm_timer();

  CompletionHoldConfig cfg_;
  UniqueFd ep_;
  UniqueFd timer_;
  uint64_t seen_ = 0;    // completions offered to hold()
  uint64_t pushed_ = 0;  // completions pushed
  std::deque<Held> held_;
};

}  // namespace iceblk::blk
