#include "base/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/le.h"
#include "base/log.h"

namespace iceblk {

namespace {

Result<sockaddr_un> make_addr(const std::string& path) {
  ICEBLK_TRY(check_socket_path(path));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

const sockaddr* as_sockaddr(const sockaddr_un& a) { return reinterpret_cast<const sockaddr*>(&a); }

// Removes the socket file on every error path after bind.
struct BoundPath {
  const std::string& path;
  bool armed = true;
  ~BoundPath() {
    if (armed) ::unlink(path.c_str());
  }
};

}  // namespace

Status check_socket_path(const std::string& path) {
  constexpr size_t kMax = sizeof(sockaddr_un::sun_path) - 1;
  if (path.empty() || path.size() > kMax) {
    return fail(Errc::kInvalidArgument, "socket path '{}' is empty or longer than {} bytes", path, kMax);
  }
  return {};
}

Result<UniqueFd> listen_unix(const std::string& path, const ListenOptions& opts) {
  ICEBLK_ASSIGN_OR_RETURN(const sockaddr_un addr, make_addr(path));
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return fail(Errc::kBusy, "socket path in use: {} exists and is not a socket", path);
    }
    // Is someone listening? Then refuse; otherwise it is a stale leftover.
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe) return tl::unexpected(errno_error(Errc::kIo, "socket", errno));
    if (::connect(probe.get(), as_sockaddr(addr), sizeof addr) == 0) {
      return fail(Errc::kBusy, "socket path in use: a server is listening on {}", path);
    }
    if (errno != ECONNREFUSED) {
      return tl::unexpected(errno_error(Errc::kBusy, fmt::format("socket path in use: probing {}", path), errno));
    }
    spdlog::info("removing stale {} {}", opts.what, path);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return tl::unexpected(errno_error(Errc::kIo, fmt::format("unlink stale socket {}", path), errno));
    }
  }
  const int type = SOCK_STREAM | SOCK_CLOEXEC | (opts.nonblocking ? SOCK_NONBLOCK : 0);
  UniqueFd fd(::socket(AF_UNIX, type, 0));
  if (!fd) return tl::unexpected(errno_error(Errc::kIo, "socket", errno));
  if (::bind(fd.get(), as_sockaddr(addr), sizeof addr) != 0) {
    const int e = errno;
    return tl::unexpected(errno_error(e == EADDRINUSE ? Errc::kBusy : Errc::kIo, fmt::format("bind {}", path), e));
  }
  BoundPath bound{path};
  if (opts.mode && ::chmod(path.c_str(), static_cast<mode_t>(*opts.mode)) != 0) {
    return tl::unexpected(errno_error(Errc::kIo, fmt::format("chmod {}", path), errno));
  }
  if (::listen(fd.get(), opts.backlog) != 0) {
    return tl::unexpected(errno_error(Errc::kIo, fmt::format("listen {}", path), errno));
  }
  bound.armed = false;
  return fd;
}

Result<UniqueFd> connect_unix(const std::string& path) {
  ICEBLK_ASSIGN_OR_RETURN(const sockaddr_un addr, make_addr(path));
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return tl::unexpected(errno_error(Errc::kIo, "socket", errno));
  if (::connect(s.get(), as_sockaddr(addr), sizeof addr) != 0) {
    return tl::unexpected(errno_error(Errc::kIo, fmt::format("connect to {}", path), errno));
  }
  return s;
}

Status send_with_fds(int sock, std::span<const uint8_t> bytes, std::span<const int> fds) {
  if (bytes.empty() && !fds.empty()) return fail(Errc::kInvalidArgument, "fds need at least one byte to travel with");
  std::vector<char> control(fds.empty() ? 0 : CMSG_SPACE(sizeof(int) * fds.size()));
  size_t sent = 0;
  bool fds_pending = !fds.empty();
  while (sent < bytes.size()) {
    iovec iov{const_cast<uint8_t*>(bytes.data()) + sent, bytes.size() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fds_pending) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    const ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == EPIPE || errno == ECONNRESET) return fail(Errc::kClosed, "peer closed the connection");
      return tl::unexpected(errno_error(Errc::kIo, "sendmsg", errno));
    }
    fds_pending = false;
    sent += static_cast<size_t>(n);
  }
  return {};
}

Result<size_t> recv_with_fds(int sock, std::span<uint8_t> buf, std::vector<UniqueFd>& fds, size_t max_fds) {
  std::vector<char> control(CMSG_SPACE(sizeof(int) * max_fds));
  for (;;) {
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return fail(Errc::kBusy, "nothing to read");
      return tl::unexpected(errno_error(Errc::kIo, "recvmsg", errno));
    }
    // Take ownership of any fds first, so every error path closes them.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) fds.emplace_back(load_obj<int>(CMSG_DATA(c) + i * sizeof(int)));
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      fds.clear();
      return fail(Errc::kProtocol, "too many file descriptors attached to one message");
    }
    return static_cast<size_t>(n);
  }
}

}  // namespace iceblk
