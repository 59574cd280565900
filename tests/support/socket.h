// Raw unix-socket peers for malformed-input tests (base/unix_socket.h underneath).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/unique_fd.h"

namespace iceblk::test {

// A connected client socket, or an invalid fd when nobody listens at `path`.
UniqueFd raw_connect(const std::string& path);

// Sends all of [p, p + n) with `fds` attached to the first byte; a gtest failure if
// the socket refuses.
void raw_send(int fd, const void* p, size_t n, const std::vector<int>& fds = {});

// Sends what the peer accepts; a peer that already closed is fine.
void send_best_effort(int fd, std::span<const uint8_t> bytes);

// True when the peer closed the socket (EOF or reset) within timeout_ms; bytes it
// sends before closing are read and dropped.
bool closed_by_peer(int fd, int timeout_ms = 5000);

}  // namespace iceblk::test
