#include "support/socket.h"

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

}  // namespace iceblk::test
