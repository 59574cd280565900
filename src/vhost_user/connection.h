// One end of a vhost-user unix stream socket: message framing and SCM_RIGHTS fd
// passing. Used by both the back-end (server side) and our front-end.
//
// TRUST: receive() is the byte-level boundary. It reads exactly one message:
// the 12-byte header, then `size` payload bytes (refused above kMaxPayloadSize
// before reading anything more). File descriptors are accepted only with the
// first bytes of a header (the spec guarantees senders attach them there); fds
// arriving later, or more than fit the control buffer (MSG_CTRUNC), make the
// message a protocol error and every received fd is closed. All received fds are
// CLOEXEC and owned by UniqueFd from the moment they arrive.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "base/le.h"
#include "base/result.h"
#include "base/unique_fd.h"
#include "vhost_user/messages.h"

namespace iceblk::vhost_user {

class Connection {
 public:
  explicit Connection(UniqueFd sock) : sock_(std::move(sock)) {}

  // Connect to a listening unix socket (front-end side).
  static Result<Connection> connect(const std::string& path);

  // Read one whole message.
  //  kClosed   - the peer closed the socket cleanly between messages, or `cancel_fd`
  //              became readable ("cancelled"), or the timeout expired ("timeout").
  //  kProtocol - truncated message, oversized payload, misplaced/too many fds.
  //  kIo       - socket error.
  // `cancel_fd` (-1 = none) is polled alongside the socket; timeout_ms -1 = forever.
  Result<RawMessage> receive(int cancel_fd = -1, int timeout_ms = -1);

  // Send header + payload; `fds` travel with the first byte. Never raises SIGPIPE.
  Status send(uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
              std::span<const int> fds = {});
  // Send pre-encoded bytes (tests use this for malformed input).
  Status send_bytes(std::span<const uint8_t> bytes, std::span<const int> fds = {});

  [[nodiscard]] int fd() const { return sock_.get(); }
  void close() { sock_.reset(); }

 private:
  Status read_exact(uint8_t* buf, size_t len, bool header_start, std::vector<UniqueFd>& fds, int cancel_fd,
                    int timeout_ms);
  UniqueFd sock_;
};

}  // namespace iceblk::vhost_user
