// Unix stream sockets: listen (with the stale-socket probe), connect, and send /
// receive with file descriptors (SCM_RIGHTS). Used by the vhost-user server and
// connection, the secure world and its client, and the tests.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"

namespace iceblk {

struct ListenOptions {
  int backlog = 8;
  bool nonblocking = false;             // SOCK_NONBLOCK on the listening socket
  std::optional<uint32_t> mode;         // chmod the socket file (e.g. 0600)
  const char* what = "socket";          // for the "removing stale ..." log line
};

// kInvalidArgument unless `path` fits a sockaddr_un (non-empty, < 108 bytes).
Status check_socket_path(const std::string& path);

// Bind and listen on `path`. A path that exists is probed first:
//  - not a socket                 -> kBusy "socket path in use: P exists and is not a socket"
//  - a server accepts a connect   -> kBusy "socket path in use: a server is listening on P"
//  - refused (its server is gone) -> the stale file is removed and replaced.
// Paths longer than sun_path are kInvalidArgument. Once bound, every later failure
// removes the file again; on success the caller owns it (unlink when done).
Result<UniqueFd> listen_unix(const std::string& path, const ListenOptions& opts = {});

// Connect to a listening socket. Errors: kInvalidArgument (bad path), kIo with the
// OS reason ("connect to P: No such file or directory").
Result<UniqueFd> connect_unix(const std::string& path);

// Send all of `bytes`; `fds` travel with the first byte (SCM_RIGHTS). Never raises
// SIGPIPE: a peer that went away is kClosed. EINTR/EAGAIN are retried.
Status send_with_fds(int sock, std::span<const uint8_t> bytes, std::span<const int> fds = {});

// One recvmsg into `buf`: returns the byte count (0 = orderly EOF) and appends any
// received fds to `fds`, CLOEXEC and owned from the moment they arrive. More fds
// than `max_fds` (control buffer truncated) is kProtocol, with every fd received
// closed. EINTR is retried; EAGAIN is kBusy (nothing to read on a non-blocking socket).
Result<size_t> recv_with_fds(int sock, std::span<uint8_t> buf, std::vector<UniqueFd>& fds, size_t max_fds = 32);

}  // namespace iceblk
