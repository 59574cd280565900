#include "vhost_user/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "base/log.h"
#include "vhost_user/connection.h"
#include "vhost_user/session.h"

namespace iceblk::vhost_user {

Result<std::unique_ptr<Server>> Server::create(const std::string& socket_path, Device& device) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return fail(Errc::kInvalidArgument, "socket path '{}' is empty or longer than {} bytes", socket_path,
                sizeof addr.sun_path - 1);
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());

  struct stat st{};
  if (::lstat(socket_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return fail(Errc::kBusy, "socket path in use: {} exists and is not a socket", socket_path);
    }
    // Is someone listening? Then refuse; otherwise it is a stale leftover.
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe) return tl::unexpected(errno_error(Errc::kIo, "socket", errno));
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return fail(Errc::kBusy, "socket path in use: a server is listening on {}", socket_path);
    }
    if (errno != ECONNREFUSED) {
      return tl::unexpected(errno_error(Errc::kBusy, fmt::format("socket path in use: probing {}", socket_path), errno));
    }
    spdlog::info("removing stale vhost-user socket {}", socket_path);
    if (::unlink(socket_path.c_str()) != 0 && errno != ENOENT) {
      return tl::unexpected(errno_error(Errc::kIo, fmt::format("unlink stale socket {}", socket_path), errno));
    }
  }

  UniqueFd lfd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!lfd) return tl::unexpected(errno_error(Errc::kIo, "socket", errno));
  if (::bind(lfd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    return tl::unexpected(errno_error(e == EADDRINUSE ? Errc::kBusy : Errc::kIo,
                                      fmt::format("bind {}", socket_path), e));
  }
  if (::listen(lfd.get(), 8) != 0) {
    const int e = errno;
    ::unlink(socket_path.c_str());
    return tl::unexpected(errno_error(Errc::kIo, fmt::format("listen {}", socket_path), e));
  }
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop) {
    const int e = errno;
    ::unlink(socket_path.c_str());
    return tl::unexpected(errno_error(Errc::kIo, "eventfd", e));
  }
  return std::unique_ptr<Server>(new Server(socket_path, device, std::move(lfd), std::move(stop)));
}

Result<std::unique_ptr<Server>> Server::adopt(UniqueFd lfd, const std::string& label, Device& device) {
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof domain;
  if (::getsockopt(lfd.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) {
    return tl::unexpected(errno_error(Errc::kInvalidArgument, fmt::format("socket {}: not a socket", label), errno));
  }
  len = sizeof type;
  ::getsockopt(lfd.get(), SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof listening;
  ::getsockopt(lfd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
  if (domain != AF_UNIX || type != SOCK_STREAM || listening == 0) {
    return fail(Errc::kInvalidArgument, "socket {}: must be a listening unix stream socket", label);
  }
  ::fcntl(lfd.get(), F_SETFD, FD_CLOEXEC);  // never leak it into anything we start
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop) return tl::unexpected(errno_error(Errc::kIo, "eventfd", errno));
  std::unique_ptr<Server> s(new Server(label, device, std::move(lfd), std::move(stop)));
  s->removed_ = true;  // the socket file is not ours to remove
  return s;
}

Server::~Server() {
  shutdown();
  remove_socket_file();
}

void Server::remove_socket_file() {
  if (!removed_.exchange(true)) ::unlink(path_.c_str());
}

void Server::shutdown() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_.get(), &one, sizeof one);
}

Status Server::run() {
  Status result;
  for (;;) {
    pollfd p[2] = {{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    const int r = ::poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      result = tl::unexpected(errno_error(Errc::kIo, "poll on listening socket", errno));
      break;
    }
    if ((p[1].revents & POLLIN) != 0) break;
    if ((p[0].revents & (POLLERR | POLLNVAL)) != 0) {
      result = fail(Errc::kIo, "listening socket {} failed", path_);
      break;
    }
    if ((p[0].revents & POLLIN) == 0) continue;
    UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) {
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      spdlog::warn("vhost-user accept on {} failed: {}", path_, std::strerror(errno));
      continue;  // e.g. EMFILE: keep serving; poll will retry
    }
    accepted_.fetch_add(1);
    spdlog::info("vhost-user front-end connected on {}", path_);
    Connection conn(std::move(c));
    if (observer_) observer_(true, {});
    Status ended = serve_connection(device_, conn, stop_.get());  // logs why it ended
    if (observer_) {
      const bool orderly = ended || ended.error().code == Errc::kClosed;
      observer_(false, orderly ? std::string() : ended.error().to_string());
    }
  }
  listen_.reset();
  remove_socket_file();
  return result;
}

}  // namespace iceblk::vhost_user
