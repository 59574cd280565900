#include "secure_world/secure_world_impl.h"

namespace iceblk::secure_world {

std::string format_audit_record(const AuditRecord& r) {
  std::string s = fmt::format("vm={} op={} slot={} result={}", r.vm_name, op_name(r.op),
                              r.slot ? fmt::to_string(*r.slot) : std::string("-"),
                              status_name(r.status));
  if (static_cast<Op>(r.op) != Op::kSetKey && static_cast<Op>(r.op) != Op::kInvalidateKey &&
      static_cast<Op>(r.op) != Op::kQueryRange) {
    s += fmt::format(" raw_op={}", r.op);
  }
  if (!r.detail.empty()) s += fmt::format(" detail=\"{}\"", r.detail);
  return s;
}

namespace detail {

Result<Listener> listen_on(const std::string& path, uint32_t mode) {
  // A socket file left by a dead process is replaced; one with a live listener is not.
  ListenOptions lo;
  lo.backlog = 16;
  lo.nonblocking = true;
  lo.mode = mode;
  lo.what = "secure-world socket";
  ICEBLK_ASSIGN_OR_RETURN(UniqueFd fd, listen_unix(path, lo));
  return Listener(std::move(fd), path);
}

}  // namespace detail

bool SecureWorld::Impl::flush(Connection& c) {
  size_t sent = 0;
  while (sent < c.out.size()) {
    const ssize_t n =
        ::send(c.fd.get(), c.out.data() + sent, c.out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      return false;
    }
  }
  c.out.erase(c.out.begin(), c.out.begin() + static_cast<std::ptrdiff_t>(sent));
  return true;
}

void SecureWorld::Impl::update_interest(uint64_t token, Connection& c) {
  // Back-pressure: while responses are pending, stop reading requests. The output
  // queue is then bounded by the responses to one input buffer's worth of requests.
  const bool want_out = !c.out.empty();
  if (want_out == c.want_out) return;
  epoll_event ev{};
  ev.events = want_out ? EPOLLOUT : EPOLLIN;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_fd.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) == 0) c.want_out = want_out;
}

void SecureWorld::Impl::close_connection(uint64_t token) {
  auto it = conns.find(token);
  if (it == conns.end()) return;
  ::epoll_ctl(epoll_fd.get(), EPOLL_CTL_DEL, it->second->fd.get(), nullptr);
  --vms[it->second->vm_index].connections;
  conns.erase(it);  // closes the fd, zeroises the buffer
}

void SecureWorld::Impl::on_connection_event(uint64_t token, uint32_t events) {
  auto it = conns.find(token);
  if (it == conns.end()) return;
  Connection& c = *it->second;

  if (c.want_out) {
    if (!flush(c)) return close_connection(token);
    if (c.out.empty()) {
      update_interest(token, c);
      // Requests that arrived while we were blocked may already be buffered.
      if (!process_input(c)) {
        flush(c);
        return close_connection(token);
      }
      if (!flush(c)) return close_connection(token);
      update_interest(token, c);
    }
    return;
  }

  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) == 0) return;
  const ssize_t n = ::recv(c.fd.get(), c.in.data() + c.in_len, kInBufSize - c.in_len, 0);
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) return;
    return close_connection(token);
  }
  if (n == 0) {
    // Peer closed (or shut down its write side). A partial message is a truncated
    // one: answer BAD_MESSAGE if the peer still reads, then close.
    if (c.in_len > 0) {
      const uint16_t op = c.in_len >= 6 ? load_obj<le16>(c.in.data() + 4).get() : uint16_t{0};
      bad_message(c, op, fmt::format("truncated message ({} bytes before end of stream)", c.in_len));
      flush(c);
    }
    return close_connection(token);
  }
  c.in_len += static_cast<size_t>(n);
  const bool keep = process_input(c);
  if (!flush(c) || !keep) {
    if (!keep) flush(c);
    return close_connection(token);
  }
  update_interest(token, c);
}

void SecureWorld::Impl::accept_all(size_t vm_index) {
  VmState& vm = vms[vm_index];
  for (;;) {
    UniqueFd fd(::accept4(listeners[vm_index].fd.get(), nullptr, nullptr,
                          SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        logger->error("vm={} accept failed: {}", vm.channel.name,
                      errno_error(Errc::kIo, "accept4", errno).message);
      }
      return;
    }
    if (vm.connections >= opts.max_connections_per_vm) {
      ICEBLK_GUEST_ERROR("secure world: vm={} connection limit {} reached, closing new one",
                         vm.channel.name, opts.max_connections_per_vm);
      continue;  // fd closes here
    }
    auto c = std::make_unique<Connection>();
    c->vm_index = vm_index;
    c->fd = std::move(fd);
    const uint64_t token = next_conn_token++;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = token;
    if (::epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, c->fd.get(), &ev) != 0) continue;
    ++vm.connections;
    conns.emplace(token, std::move(c));
  }
}

void SecureWorld::Impl::run() {
  std::array<epoll_event, 64> events{};
  for (;;) {
    const int n = ::epoll_wait(epoll_fd.get(), events.data(), static_cast<int>(events.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      logger->error("epoll_wait failed: {}", errno_error(Errc::kIo, "epoll_wait", errno).message);
      return;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t token = events[static_cast<size_t>(i)].data.u64;
      if (token == kStopToken) return;
      if (token < kConnectionBase) {
        accept_all(static_cast<size_t>(token - kListenerBase));
      } else {
        on_connection_event(token, events[static_cast<size_t>(i)].events);
      }
    }
  }
}

void SecureWorld::Impl::teardown() {
  conns.clear();
  for (auto& vm : vms) vm.connections = 0;
  listeners.clear();  // closes and unlinks
  stop_fd.reset();
  epoll_fd.reset();
}

SecureWorld::SecureWorld(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SecureWorld::~SecureWorld() { stop(); }

Result<std::unique_ptr<SecureWorld>> SecureWorld::create(ice::Engine& engine,
                                                         std::vector<VmChannel> vms,
                                                         SecureWorldOptions opts) {
  if (opts.capabilities.empty()) {
    return fail(Errc::kInvalidArgument, "secure world: no capabilities given");
  }
  if (vms.empty()) return fail(Errc::kInvalidArgument, "secure world: no VM channels given");
  if (opts.max_connections_per_vm == 0 || opts.audit_capacity == 0) {
    return fail(Errc::kInvalidArgument,
                "secure world: max_connections_per_vm and audit_capacity must be > 0");
  }
  std::set<uint32_t> ids;
  std::set<std::string> paths;
  for (const auto& v : vms) {
    if (v.name.empty()) return fail(Errc::kInvalidArgument, "secure world: VM without a name");
    ICEBLK_TRY(check_socket_path(v.socket_path));
    auto range = engine.vm_range(v.vm);
    if (!range) {
      return fail(Errc::kInvalidArgument, "secure world: VM '{}' is not registered with the engine",
                  v.name);
    }
    if (!ids.insert(v.vm.value).second) {
      return fail(Errc::kInvalidArgument, "secure world: VM '{}' is listed twice", v.name);
    }
    if (!paths.insert(v.socket_path).second) {
      return fail(Errc::kInvalidArgument, "secure world: socket path '{}' is used twice",
                  v.socket_path);
    }
  }

  auto impl = std::make_unique<Impl>(engine, std::move(opts));
  std::vector<spdlog::sink_ptr> sinks = spdlog::default_logger()->sinks();
  sinks.insert(sinks.end(), impl->opts.audit_sinks.begin(), impl->opts.audit_sinks.end());
  impl->logger = std::make_shared<spdlog::logger>("secure_world.audit", sinks.begin(), sinks.end());
  impl->logger->set_level(spdlog::level::info);
  for (auto& v : vms) {
    VmState s;
    s.channel = std::move(v);
    s.log_limiter = std::make_unique<log::RateLimiter>(impl->opts.audit_log_per_second);
    impl->vms.push_back(std::move(s));
  }
  return std::unique_ptr<SecureWorld>(new SecureWorld(std::move(impl)));
}

Status SecureWorld::start() {
  Impl& s = *impl_;
  if (s.running.load()) return fail(Errc::kBusy, "secure world: already running");

  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return fail(errno_error(Errc::kIo, "epoll_create1", errno));
  UniqueFd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd) return fail(errno_error(Errc::kIo, "eventfd", errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kStopToken;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, stop_fd.get(), &ev) != 0) {
    return fail(errno_error(Errc::kIo, "epoll_ctl", errno));
  }
  std::vector<Listener> listeners;
  listeners.reserve(s.vms.size());
  for (size_t i = 0; i < s.vms.size(); ++i) {
    ICEBLK_ASSIGN_OR_RETURN(auto l, listen_on(s.vms[i].channel.socket_path, s.opts.socket_mode));
    ev.events = EPOLLIN;
    ev.data.u64 = kListenerBase + i;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, l.fd.get(), &ev) != 0) {
      return fail(errno_error(Errc::kIo, "epoll_ctl", errno));
    }
    listeners.push_back(std::move(l));
  }

  s.epoll_fd = std::move(ep);
  s.stop_fd = std::move(stop_fd);
  s.listeners = std::move(listeners);
  s.running.store(true);
  s.thread = std::thread([&s] { s.run(); });
  for (const auto& vm : s.vms) {
    auto r = s.engine.vm_range(vm.channel.vm);
    s.logger->info("vm={} channel {} serving slots [{}, {})", vm.channel.name,
                   vm.channel.socket_path, r ? r->offset : 0,
                   r ? uint64_t{r->offset} + r->count : 0);
  }
  return {};
}

void SecureWorld::stop() {
  Impl& s = *impl_;
  if (!s.running.load()) return;
  const uint64_t one = 1;
  // ORDER: the loop thread returns when it sees the eventfd; only then is its
  // state torn down here.
  [[maybe_unused]] ssize_t w = ::write(s.stop_fd.get(), &one, sizeof one);
  if (s.thread.joinable()) s.thread.join();
  s.teardown();
  s.running.store(false);
}

bool SecureWorld::running() const { return impl_->running.load(); }

std::vector<AuditRecord> SecureWorld::audit_log() const {
  std::lock_guard lk(impl_->audit_mu);
  return {impl_->audit.begin(), impl_->audit.end()};
}

std::shared_ptr<spdlog::logger> SecureWorld::audit_logger() const { return impl_->logger; }

}  // namespace iceblk::secure_world
