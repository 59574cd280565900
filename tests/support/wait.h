// Waiting in tests: poll a condition until it holds or a timeout passes.
#pragma once

#include <chrono>
#include <thread>

namespace iceblk::test {

// True as soon as p() is; false if it still is not after timeout_ms.
template <typename Pred>
bool eventually(Pred p, int timeout_ms = 5000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (p()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return p();
}

}  // namespace iceblk::test
