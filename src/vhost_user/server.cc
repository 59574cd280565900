#include "vhost_user/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/log.h"
#include "base/unix_socket.h"
#include "vhost_user/connection.h"
#include "vhost_user/session.h"

namespace iceblk::vhost_user {

Status serve_connection(Backend& device, Connection& conn, int cancel_fd) {
  Session session(device);
  // Wait on the cancel fd and on the session's poisoned fd (a ring stopped on guest
  // memory the front-end shrank): an epoll set of the two is readable when either is.
  UniqueFd wake(::epoll_create1(EPOLL_CLOEXEC));
  int stop_fd = cancel_fd;
  if (wake && session.poisoned_fd() >= 0) {
    bool ok = true;
    for (int fd : {cancel_fd, session.poisoned_fd()}) {
      if (fd < 0) continue;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ok = ok && ::epoll_ctl(wake.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
    }
    if (ok) stop_fd = wake.get();
  }
  Status why;
  for (;;) {
    auto raw = conn.receive(stop_fd);
    if (!raw) {
      why = tl::unexpected(raw.error());
      if (session.poisoned()) why = tl::unexpected(session.poisoned_error());
      break;
    }
    const std::string name = request_name_of(raw->header.request);
    auto msg = decode(std::move(*raw));
    if (!msg) {
      why = tl::unexpected(msg.error());
      break;
    }
    auto reply = session.handle(std::move(*msg));
    if (!reply) {
      why = tl::unexpected(reply.error());
      break;
    }
    if (*reply) {
      const int fd = (*reply)->fd.get();
      auto s = conn.send((*reply)->request, kVersion | kFlagReply, (*reply)->payload,
                         fd >= 0 ? std::span<const int>(&fd, 1) : std::span<const int>());
      if (!s) {
        why = tl::unexpected(make_error(s.error().code, "sending {} reply: {}", name, s.error().message));
        break;
      }
    }
  }
  session.close();
  conn.close();
  if (why.error().code == Errc::kClosed) {
    spdlog::info("vhost-user front-end disconnected ({})", why.error().message);
  } else {
    ICEBLK_PEER_WARN("vhost-user connection closed: {}", why.error().to_string());
  }
  return why;
}

Result<std::unique_ptr<Server>> Server::create(const std::string& socket_path, Backend& device) {
  ListenOptions lo;
  lo.what = "vhost-user socket";
  ICEBLK_ASSIGN_OR_RETURN(UniqueFd lfd, listen_unix(socket_path, lo));
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop) {
    const int e = errno;
    ::unlink(socket_path.c_str());
    return tl::unexpected(errno_error(Errc::kIo, "eventfd", e));
  }
  return std::unique_ptr<Server>(new Server(socket_path, device, std::move(lfd), std::move(stop)));
}

Result<std::unique_ptr<Server>> Server::adopt(UniqueFd lfd, const std::string& label, Backend& device) {
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
