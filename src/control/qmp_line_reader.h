// Client side of a QMP stream: newline-delimited messages read from a socket with
// a deadline. Shared by `iceblk ctl` and the control tests; each decides what a
// line that is not JSON means (the CLI fails, the tests record it).
#pragma once

#include <string>

namespace iceblk::control {

class QmpLineReader {
 public:
  enum class Outcome { kLine, kTimeout, kClosed };

  // `fd` is borrowed: a connected stream socket that outlives the reader's use.
  explicit QmpLineReader(int fd = -1) : fd_(fd) {}
  void reset(int fd) {
    fd_ = fd;
    buf_.clear();
    eof_ = false;
  }

  // The next non-empty line (without "\n" or a trailing "\r") within timeout_ms.
  // Lines already buffered are returned even after the peer closed.
  Outcome next(std::string& line, int timeout_ms);

  // True once the peer closed the connection (EOF or an error on recv).
  [[nodiscard]] bool closed() const { return eof_; }

 private:
  int fd_;
  std::string buf_;
  bool eof_ = false;
};

}  // namespace iceblk::control
