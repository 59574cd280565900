// Logging through spdlog. Guest-caused errors are logged at debug level and
// rate-limited (ICEBLK_GUEST_ERROR), so a guest cannot flood the host log.
// Never log key bytes: SecretBytes has no formatter on purpose.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>

namespace iceblk::log {

// Set the global level from a string ("trace".."off"); unknown strings keep "info".
void set_level(std::string_view level);

// Install `logger` as spdlog's default logger. Use this, never
// spdlog::set_default_logger(): spdlog::info() and friends log through
// default_logger_raw(), a bare pointer that holds no reference, so a thread still
// inside a log call when the default logger is replaced would use freed memory
// (TSan: heap-use-after-free at daemon shutdown in the lifecycle tests). Every logger
// installed here, and the one it replaces, is kept alive until the process exits
// (a handful per process: the daemon's, a test's capture logger).
void set_default_logger(std::shared_ptr<spdlog::logger> logger);

// Allows at most `per_second` events per second; the rest are counted and dropped.
class RateLimiter {
 public:
  explicit RateLimiter(unsigned per_second = 10) : per_second_(per_second) {}
  bool allow();

 private:
  unsigned per_second_;
  std::atomic<int64_t> window_start_{0};
  std::atomic<unsigned> count_{0};
};

}  // namespace iceblk::log

// Peer-caused warnings (a vhost-user front-end breaking the protocol): warn level,
// rate limited so a front-end cannot flood the log.
#define ICEBLK_PEER_WARN(...)                                 \
  do {                                                        \
    static ::iceblk::log::RateLimiter iceblk_peer_rl_;        \
    if (iceblk_peer_rl_.allow()) ::spdlog::warn(__VA_ARGS__); \
  } while (0)

#define ICEBLK_GUEST_ERROR(...)                           \
  do {                                                    \
    static ::iceblk::log::RateLimiter iceblk_rl_;         \
    if (iceblk_rl_.allow()) ::spdlog::debug(__VA_ARGS__); \
  } while (0)
