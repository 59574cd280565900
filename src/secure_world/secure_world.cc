#include "secure_world/secure_world.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "base/log.h"
#include "base/secret_bytes.h"
#include "base/unique_fd.h"
#include "base/unix_socket.h"
#include "ice/key_blob.h"

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

namespace {

constexpr uint64_t kStopToken = 0;
constexpr uint64_t kListenerBase = 1;              // listener i has token kListenerBase + i
constexpr uint64_t kConnectionBase = 1ULL << 32;   // connections count up from here
constexpr size_t kInBufSize = kHeaderSize + kMaxPayloadLen;

// A listening socket whose file is removed when it goes away.
struct Listener {
  UniqueFd fd;
  std::string path;
  Listener() = default;
  Listener(UniqueFd f, std::string p) : fd(std::move(f)), path(std::move(p)) {}
  Listener(Listener&&) = default;
  Listener& operator=(Listener&&) = delete;
  ~Listener() {
    if (fd.valid()) ::unlink(path.c_str());
  }
};

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

struct Connection {
  size_t vm_index = 0;
  UniqueFd fd;
  // Holds at most one header + kMaxPayloadLen bytes, which may include key material:
  // consumed bytes are zeroised at once and the whole buffer on destruction.
  std::array<uint8_t, kInBufSize> in{};
  size_t in_len = 0;
  std::vector<uint8_t> out;  // queued responses (never secret)
  bool want_out = false;     // registered for EPOLLOUT instead of EPOLLIN
  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() { secure_zero(in.data(), in.size()); }
};

struct VmState {
  VmChannel channel;
  size_t connections = 0;
  std::unique_ptr<log::RateLimiter> log_limiter;
  uint64_t suppressed = 0;  // audit lines not logged since the last one that was
};

}  // namespace

struct SecureWorld::Impl {
  ice::Engine& engine;
  SecureWorldOptions opts;
  std::vector<VmState> vms;
  std::shared_ptr<spdlog::logger> logger;

  mutable std::mutex audit_mu;
  std::deque<AuditRecord> audit;

  // Owned by the controlling thread while stopped, by the loop thread while running.
  UniqueFd epoll_fd;
  UniqueFd stop_fd;
  std::vector<Listener> listeners;
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> conns;
  uint64_t next_conn_token = kConnectionBase;
  std::thread thread;
  std::atomic<bool> running{false};

  Impl(ice::Engine& e, SecureWorldOptions o) : engine(e), opts(std::move(o)) {}

  void audit_record(VmState& vm, uint16_t op, std::optional<uint32_t> slot,
                    WireStatus status, std::string detail);
  void run();
  void accept_all(size_t vm_index);
  void on_connection_event(uint64_t token, uint32_t events);
  // Parses and serves every complete message in c.in; false when the connection
  // must be closed (after a BAD_MESSAGE reply was queued).
  bool process_input(Connection& c);
  void serve(Connection& c, const RequestHeader& hdr, std::span<const uint8_t> payload);
  void bad_message(Connection& c, uint16_t op, std::string why);
  void queue_response(Connection& c, uint16_t op, WireStatus st, std::span<const uint8_t> payload);
  // Sends queued output; false if the peer is gone.
  bool flush(Connection& c);
  void close_connection(uint64_t token);
  void update_interest(uint64_t token, Connection& c);
  void teardown();
};

// Called only on the loop thread (vm.suppressed is not shared).
void SecureWorld::Impl::audit_record(VmState& vm, uint16_t op, std::optional<uint32_t> slot,
                                     WireStatus status, std::string detail) {
  AuditRecord r{std::chrono::system_clock::now(), vm.channel.name, op, slot, status,
                std::move(detail)};
  if (vm.log_limiter->allow()) {
    if (vm.suppressed != 0) {
      logger->warn("vm={} {} audit records not logged (rate limit)", vm.channel.name,
                   std::exchange(vm.suppressed, 0));
    }
    logger->log(status == WireStatus::kOk ? spdlog::level::info : spdlog::level::warn, "{}",
                format_audit_record(r));
  } else {
    ++vm.suppressed;
  }
  std::lock_guard lk(audit_mu);
  audit.push_back(std::move(r));
  while (audit.size() > opts.audit_capacity) audit.pop_front();
}

void SecureWorld::Impl::queue_response(Connection& c, uint16_t op, WireStatus st,
                                       std::span<const uint8_t> payload) {
  ResponseHeader h;
  h.magic = kMagic;
  h.op = op;
  h.status = static_cast<uint16_t>(st);
  h.payload_len = static_cast<uint32_t>(payload.size());
  const auto* hp = reinterpret_cast<const uint8_t*>(&h);
  c.out.insert(c.out.end(), hp, hp + sizeof h);
  c.out.insert(c.out.end(), payload.begin(), payload.end());
}

void SecureWorld::Impl::bad_message(Connection& c, uint16_t op, std::string why) {
  audit_record(vms[c.vm_index], op, std::nullopt, WireStatus::kBadMessage, std::move(why));
  queue_response(c, op, WireStatus::kBadMessage, {});
}

void SecureWorld::Impl::serve(Connection& c, const RequestHeader& hdr,
                              std::span<const uint8_t> payload) {
  VmState& vm = vms[c.vm_index];
  const uint16_t op = hdr.op;
  auto reply = [&](std::optional<uint32_t> slot, WireStatus st, std::string detail,
                   std::span<const uint8_t> out_payload = {}) {
    // The audit record is written before the reply leaves, so a client that got its
    // reply always finds its record.
    audit_record(vm, op, slot, st, std::move(detail));
    queue_response(c, op, st, out_payload);
  };

  // The caller's range, as the engine knows it now (the VM may have been removed).
  auto range = engine.vm_range(vm.channel.vm);
  std::optional<uint32_t> slot;
  if (payload.size() >= sizeof(SlotPayload)) slot = load_obj<le32>(payload.data()).get();

  if (!range) {
    reply(slot, WireStatus::kDenied, "VM is no longer registered with the engine");
    return;
  }
  if (static_cast<Op>(op) == Op::kQueryRange) {
    RangePayload rp;
    rp.slot_offset = range->offset;
    rp.max_slots = range->count;
    reply(std::nullopt, WireStatus::kOk, {},
          std::span(reinterpret_cast<const uint8_t*>(&rp), sizeof rp));
    return;
  }

  // Spec §7: a slot outside the caller's range is refused before the engine (or the
  // key blob) is looked at.
  if (!range->contains(PhysSlot(*slot))) {
    reply(slot, WireStatus::kDenied,
          fmt::format("slot outside the VM's range [{}, {})", range->offset,
                      uint64_t{range->offset} + range->count));
    return;
  }

  if (static_cast<Op>(op) == Op::kInvalidateKey) {
    auto st = engine.evict(PhysSlot(*slot));
    if (!st) {
      reply(slot, WireStatus::kInternal, st.error().to_string());
    } else {
      reply(slot, WireStatus::kOk, {});
    }
    return;
  }

  // SET_KEY: the blob is parsed in place in the connection's input buffer, which
  // process_input zeroises as soon as this returns.
  const auto blob = payload.subspan<offsetof(SetKeyPayload, blob), ice::kKeyBlobSize>();
  auto key = ice::parse_key_blob(blob, opts.capabilities);
  if (!key) {
    reply(slot, key_blob_status(key.error()), key.error().message);
    return;
  }
  auto st = engine.program(PhysSlot(*slot), std::move(*key));
  if (!st) {
    reply(slot, WireStatus::kInternal, st.error().to_string());
    return;
  }
  reply(slot, WireStatus::kOk, {});
}

bool SecureWorld::Impl::process_input(Connection& c) {
  while (c.in_len >= kHeaderSize) {
    // TRUST: the header is copied out of the peer's bytes once and checked before use.
    const auto hdr = load_obj<RequestHeader>(c.in.data());
    const uint16_t op = hdr.op;
    const auto want = check_request_header(hdr);
    if (!want) {
      bad_message(c, op, want.error().message);
      return false;
    }
    const size_t total = kHeaderSize + *want;  // <= kInBufSize, checked above
    if (c.in_len < total) return true;          // wait for the rest
    serve(c, hdr, std::span<const uint8_t>(c.in.data() + kHeaderSize, *want));
    // Zeroise the consumed message (it may hold a key), keep what follows it.
    secure_zero(c.in.data(), total);
    std::memmove(c.in.data(), c.in.data() + total, c.in_len - total);
    c.in_len -= total;
    secure_zero(c.in.data() + c.in_len, kInBufSize - c.in_len);
  }
  return true;
}

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
