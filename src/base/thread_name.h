// Names the calling thread for `top -H`, `ps -L` and /proc/PID/task/*/comm
// (the benchmarks find a queue's worker by it). The kernel keeps 15 bytes, so the
// name is cut there; put what tells threads apart first.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <string>
#include <string_view>

namespace iceblk {

inline constexpr size_t kMaxThreadNameLen = 15;  // TASK_COMM_LEN - 1

inline void set_thread_name(std::string_view name) {
  const std::string cut(name.substr(0, std::min(name.size(), kMaxThreadNameLen)));
  // Best effort: a thread keeps its inherited name if this fails.
  (void)pthread_setname_np(pthread_self(), cut.c_str());
}

// A vring worker's name: queue first, so a long export name cannot hide it.
inline std::string vring_worker_thread_name(std::string_view export_name, unsigned queue) {
  std::string n = "vq" + std::to_string(queue);
  if (!export_name.empty()) {
    n += ':';
    n += export_name;
  }
  return n.substr(0, std::min(n.size(), kMaxThreadNameLen));
}

}  // namespace iceblk
