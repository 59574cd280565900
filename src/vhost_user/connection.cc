#include "vhost_user/connection.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

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
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return fail(Errc::kInvalidArgument, "socket path '{}' is empty or too long", path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return tl::unexpected(errno_error(Errc::kIo, "socket", errno));
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return tl::unexpected(errno_error(Errc::kIo, fmt::format("connect to {}", path), errno));
  }
  return Connection(std::move(s));
}

Status Connection::read_exact(uint8_t* buf, size_t len, bool header_start, std::vector<UniqueFd>& fds,
                              int cancel_fd, int timeout_ms) {
  size_t got = 0;
  while (got < len) {
    ICEBLK_TRY(wait_readable(sock_.get(), cancel_fd, timeout_ms));
    iovec iov{buf + got, len - got};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kRecvFdCapacity)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(sock_.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return tl::unexpected(errno_error(Errc::kIo, "recvmsg on vhost-user socket", errno));
    }
    // Take ownership of any fds first, so every error path below closes them.
    size_t received_now = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        fds.emplace_back(load_obj<int>(CMSG_DATA(c) + i * sizeof(int)));
        ++received_now;
      }
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      return fail(Errc::kProtocol, "too many file descriptors attached to one message");
    }
    const bool first_read = header_start && got == 0;
    if (received_now > 0 && !first_read) {
      return fail(Errc::kProtocol, "file descriptors received after the first bytes of a message");
    }
    if (n == 0) {
      if (first_read) return fail(Errc::kClosed, "peer closed the connection");
      return fail(Errc::kProtocol, "truncated message: peer closed after {} of {} bytes", got, len);
    }
    got += static_cast<size_t>(n);
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
  size_t sent = 0;
  bool fds_pending = !fds.empty();
  while (sent < bytes.size() || fds_pending) {
    iovec iov{const_cast<uint8_t*>(bytes.data()) + sent, bytes.size() - sent};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kRecvFdCapacity)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fds_pending) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    const ssize_t n = ::sendmsg(sock_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == EPIPE || errno == ECONNRESET) return fail(Errc::kClosed, "peer closed the connection");
      return tl::unexpected(errno_error(Errc::kIo, "sendmsg on vhost-user socket", errno));
    }
    fds_pending = false;
    sent += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace iceblk::vhost_user
