#include "support/socket.h"

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "base/unix_socket.h"

namespace iceblk::test {

UniqueFd raw_connect(const std::string& path) {
  auto s = connect_unix(path);
  return s ? std::move(*s) : UniqueFd();
}

void raw_send(int fd, const void* p, size_t n, const std::vector<int>& fds) {
  auto s = send_with_fds(fd, {static_cast<const uint8_t*>(p), n}, fds);
  ASSERT_TRUE(s) << s.error().to_string();
}

void send_best_effort(int fd, std::span<const uint8_t> bytes) { (void)send_with_fds(fd, bytes); }

bool closed_by_peer(int fd, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    char buf[256];
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace iceblk::test
