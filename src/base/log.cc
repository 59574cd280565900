#include "base/log.h"

#include <mutex>
#include <vector>

namespace iceblk::log {

void set_default_logger(std::shared_ptr<spdlog::logger> logger) {
  static std::mutex mu;
  // Never destroyed: threads may log during static destruction too.
  static auto* retained = new std::vector<std::shared_ptr<spdlog::logger>>;
  std::lock_guard lk(mu);
  retained->push_back(spdlog::default_logger());
  retained->push_back(logger);
  spdlog::set_default_logger(std::move(logger));
}

void set_level(std::string_view level) {
  auto l = spdlog::level::from_str(std::string(level));
  if (l == spdlog::level::off && level != "off") l = spdlog::level::info;
  spdlog::set_level(l);
}

bool RateLimiter::allow() {
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t start = window_start_.load(std::memory_order_relaxed);
  if (now != start && window_start_.compare_exchange_strong(start, now)) {
    count_.store(0, std::memory_order_relaxed);
  }
  return count_.fetch_add(1, std::memory_order_relaxed) < per_second_;
}

}  // namespace iceblk::log
