#include "vhost_user/connection.h"

#include <poll.h>

#include <cerrno>
#include <cstring>

#include "base/unix_socket.h"

namespace iceblk::vhost_user {

namespace {

// Room for more fds than any message may carry, so "too many" is detected as a
// count (and closed) rather than silently truncated.
constexpr size_t kRecvFdCapacity = 32;

// Wait until `fd` is readable. kClosed on cancel/timeout.
Status wait_readable(int fd, int cancel_fd, int timeout_ms) {
  pollfd p[2] = {{fd, POLLIN, 0}, {cancel_fd, POLLIN, 0}};
  const nfds_t n = cancel_fd >= 0 ? 2 : 1;
  for (;;) {
    const int r = ::poll(p, n, timeout_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return tl::unexpected(errno_error(Errc::kIo, "poll on vhost-user socket", errno));
    }
    if (r == 0) return fail(Errc::kClosed, "timeout waiting for vhost-user message");
    if (n == 2 && (p[1].revents & POLLIN) != 0) return fail(Errc::kClosed, "cancelled");
    return {};  // readable, or HUP/ERR: recvmsg reports which
  }
}

}  // namespace

Result<Connection> Connection::connect(const std::string& path) {
  ICEBLK_ASSIGN_OR_RETURN(UniqueFd s, connect_unix(path));
  return Connection(std::move(s));
}

Status Connection::read_exact(uint8_t* buf, size_t len, bool header_start, std::vector<UniqueFd>& fds,
                              int cancel_fd, int timeout_ms) {
  size_t got = 0;
  while (got < len) {
    ICEBLK_TRY(wait_readable(sock_.get(), cancel_fd, timeout_ms));
    const size_t fds_before = fds.size();
    auto n = recv_with_fds(sock_.get(), {buf + got, len - got}, fds, kRecvFdCapacity);
    if (!n) {
      if (n.error().code == Errc::kBusy) continue;
      if (n.error().code == Errc::kProtocol) return tl::unexpected(n.error());
      return fail(n.error().code, "{} on vhost-user socket", n.error().message);
    }
    const bool first_read = header_start && got == 0;
    if (fds.size() > fds_before && !first_read) {
      return fail(Errc::kProtocol, "file descriptors received after the first bytes of a message");
    }
    if (*n == 0) {
      if (first_read) return fail(Errc::kClosed, "peer closed the connection");
      return fail(Errc::kProtocol, "truncated message: peer closed after {} of {} bytes", got, len);
    }
    got += *n;
  }
  return {};
}

Result<RawMessage> Connection::receive(int cancel_fd, int timeout_ms) {
  if (!sock_) return fail(Errc::kClosed, "connection closed");
  RawMessage m;
  uint8_t hdr[sizeof(Header)];
  ICEBLK_TRY(read_exact(hdr, sizeof hdr, true, m.fds, cancel_fd, timeout_ms));
  m.header = load_obj<Header>(hdr);
  if (m.header.size > kMaxPayloadSize) {
    return fail(Errc::kProtocol, "{}: payload size {} exceeds the limit {}", request_name_of(m.header.request),
                m.header.size, kMaxPayloadSize);
  }
  m.payload.resize(m.header.size);
  if (m.header.size > 0) {
    ICEBLK_TRY(read_exact(m.payload.data(), m.payload.size(), false, m.fds, cancel_fd, timeout_ms));
  }
  return m;
}

Status Connection::send(uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
                        std::span<const int> fds) {
  return send_bytes(encode(request, flags, payload), fds);
}

Status Connection::send_bytes(std::span<const uint8_t> bytes, std::span<const int> fds) {
  if (!sock_) return fail(Errc::kClosed, "connection closed");
  if (fds.size() > kRecvFdCapacity) return fail(Errc::kInvalidArgument, "too many fds to send");
  if (bytes.empty()) return fail(Errc::kInvalidArgument, "fds need at least one byte to travel with");
  return send_with_fds(sock_.get(), bytes, fds);
}

}  // namespace iceblk::vhost_user
