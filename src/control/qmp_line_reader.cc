#include "control/qmp_line_reader.h"

#include <poll.h>
#include <sys/socket.h>

#include <chrono>

namespace iceblk::control {

QmpLineReader::Outcome QmpLineReader::next(std::string& line, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    for (size_t nl = buf_.find('\n'); nl != std::string::npos; nl = buf_.find('\n')) {
      line.assign(buf_, 0, nl);
      buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) return Outcome::kLine;
    }
    if (eof_) return Outcome::kClosed;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) return Outcome::kTimeout;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0)
      continue;  // timeout or EINTR: re-check the deadline
    char tmp[65536];
    const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) {
      eof_ = true;
      continue;
    }
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

}  // namespace iceblk::control
