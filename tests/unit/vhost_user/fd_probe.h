// Test helper: a pipe whose write end is handed to code under test; closed() tells
// whether every copy of the write end has been closed (read end sees EOF).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "base/unique_fd.h"

namespace iceblk::vhost_user::testing {

class FdProbe {
 public:
  FdProbe() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
      read_.reset(p[0]);
      write_.reset(p[1]);
    }
  }
  // The write end, to be passed (moved) into a message.
  UniqueFd take() { return std::move(write_); }
  // A dup of the write end (the probe keeps none of its own).
  [[nodiscard]] int raw_write_end() const { return write_.get(); }
  void drop_own_copy() { write_.reset(); }
  // True when no write end remains open anywhere in this process.
  [[nodiscard]] bool closed() const {
    pollfd p{read_.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) return false;
    char c;
    return ::read(read_.get(), &c, 1) == 0;
  }

 private:
  UniqueFd read_;
  UniqueFd write_;
};

}  // namespace iceblk::vhost_user::testing
