// Monotonic nanoseconds (CLOCK_MONOTONIC), for request latencies and short spin
// deadlines: one clock_gettime, no allocation, the vDSO's fast path.
#pragma once

#include <time.h>

#include <cstdint>

namespace iceblk {

inline uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace iceblk
