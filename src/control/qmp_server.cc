#include "control/qmp_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/log.h"

namespace iceblk::control {

using nlohmann::json;

namespace {

constexpr size_t kMaxQueuedEvents = 4096;

std::string serialize(const json& j) {
  // Input strings came through the JSON parser (valid UTF-8); replace anything
  // else rather than throw. ASCII output, as QMP specifies.
  return j.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace) + "\r\n";
}

json timestamp_now() {
  timeval tv{};
  ::gettimeofday(&tv, nullptr);
  return json{{"seconds", static_cast<int64_t>(tv.tv_sec)}, {"microseconds", static_cast<int64_t>(tv.tv_usec)}};
}

json error_reply(const std::string& cls, const std::string& desc) {
  return json{{"error", {{"class", cls}, {"desc", desc}}}};
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// Splits the byte stream into JSON values the way QMP's streaming parser does:
// a value ends when its outermost brace or bracket closes (strings and escapes
// tracked), a bare scalar at whitespace. No newline needed.
struct QmpServer::Client {
  UniqueFd fd;
  std::string out;    // bytes not yet written
  std::string cur;    // the message being accumulated
  int depth = 0;
  bool in_string = false;
  bool escape = false;
  bool negotiated = false;
  bool closing = false;  // disconnect once `out` is written
  bool dead = false;
  int64_t connected_ms = 0;
  uint64_t id = 0;
};

Result<std::unique_ptr<QmpServer>> QmpServer::create(const std::string& path, daemon::Daemon& d, QmpOptions opts,
                                                     std::function<void()> on_quit) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return fail(Errc::kInvalidArgument, "control socket path '{}' is empty or longer than {} bytes", path,
                sizeof addr.sun_path - 1);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail(Errc::kBusy, "control socket path in use: {} is not a socket", path);
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return fail(Errc::kBusy, "control socket path in use: a server is listening on {}", path);
    }
    ::unlink(path.c_str());
  }
  UniqueFd lfd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!lfd) return tl::unexpected(errno_error(Errc::kIo, "socket", errno));
  if (::bind(lfd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return tl::unexpected(errno_error(Errc::kIo, fmt::format("bind {}", path), errno));
  }
  // Owner only, before anyone can connect (connect fails until listen()).
  if (::chmod(path.c_str(), 0600) != 0 || ::listen(lfd.get(), 16) != 0) {
    const int e = errno;
    ::unlink(path.c_str());
    return tl::unexpected(errno_error(Errc::kIo, fmt::format("chmod/listen {}", path), e));
  }
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) {
    const int e = errno;
    ::unlink(path.c_str());
    return tl::unexpected(errno_error(Errc::kIo, "eventfd", e));
  }
  std::unique_ptr<QmpServer> s(new QmpServer(path, d, opts, std::move(on_quit), std::move(lfd), std::move(wake)));
  d.set_observer(s.get());
  spdlog::info("control: QMP on {}", path);
  return s;
}

QmpServer::QmpServer(std::string path, daemon::Daemon& d, QmpOptions opts, std::function<void()> on_quit,
                     UniqueFd listen, UniqueFd wake)
    : path_(std::move(path)),
      daemon_(d),
      commands_(d),
      opts_(opts),
      on_quit_(std::move(on_quit)),
      listen_(std::move(listen)),
      wake_(std::move(wake)) {}

QmpServer::~QmpServer() { stop(); }

Status QmpServer::start() {
  thread_ = std::thread([this] { run(); });
  return {};
}

void QmpServer::stop() {
  {
    std::lock_guard lk(mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_ = true;
  }
  daemon_.set_observer(nullptr);  // events after this are not wanted
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  clients_.clear();
  listen_.reset();
  ::unlink(path_.c_str());
}

size_t QmpServer::clients() const {
  std::lock_guard lk(mu_);
  return nclients_;
}

void QmpServer::emit(const std::string& event, json data) {
  json msg{{"event", event}, {"data", std::move(data)}, {"timestamp", timestamp_now()}};
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    if (events_.size() >= kMaxQueuedEvents) {
      events_.pop_front();  // a flood (e.g. a guest programming keys in a loop) keeps the newest
      ++dropped_events_;
    }
    events_.push_back(serialize(msg));
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
}

void QmpServer::export_connected(const std::string& name) { emit("EXPORT_CONNECTED", json{{"export", name}}); }
void QmpServer::export_disconnected(const std::string& name) {
  emit("EXPORT_DISCONNECTED", json{{"export", name}});
}
void QmpServer::keyslot_changed(uint32_t slot, const std::string& vm, bool programmed) {
  emit(programmed ? "KEYSLOT_PROGRAMMED" : "KEYSLOT_EVICTED", json{{"slot", slot}, {"vm", vm}});
}

void QmpServer::peer_refused(const std::string& channel, const std::string& export_name,
                             const std::string& reason) {
  emit("PEER_REFUSED", json{{"channel", channel}, {"export", export_name}, {"reason", reason}});
}

void QmpServer::refuse(int fd, const std::string& reason) {
  const std::string msg = serialize(error_reply("GenericError", reason));
  [[maybe_unused]] ssize_t n = ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  spdlog::warn("control: refused a client: {}", reason);
  emit("PEER_REFUSED", json{{"channel", "control"}, {"reason", reason}});
}

void QmpServer::accept_clients() {
  static uint64_t next_id = 1;
  for (;;) {
    UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!c) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN) spdlog::warn("control: accept: {}", std::strerror(errno));
      return;
    }
    if (clients_.size() >= opts_.max_clients) {
      refuse(c.get(), fmt::format("too many control clients (at most {}); try again later", opts_.max_clients));
      continue;  // closed here
    }
    auto cl = std::make_unique<Client>();
    cl->fd = std::move(c);
    cl->connected_ms = now_ms();
    cl->id = next_id++;
    send(*cl, json{{"QMP",
                    {{"version", {{"qemu", {{"major", 0}, {"minor", 1}, {"micro", 0}}}, {"package", "iceblkd"}}},
                     {"capabilities", json::array()}}}});
    clients_.push_back(std::move(cl));
  }
}

void QmpServer::send(Client& c, const json& msg) {
  c.out += serialize(msg);
  write_client(c);
}

void QmpServer::write_client(Client& c) {
  while (!c.out.empty() && !c.dead) {
    const ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    c.dead = true;  // EPIPE, ECONNRESET...
  }
  if (c.out.empty() && c.closing) c.dead = true;
}

void QmpServer::read_client(Client& c) {
  char buf[16384];
  for (;;) {
    if (c.closing || c.dead) return;
    // Backpressure: a client that does not read its replies is not read either.
    if (c.out.size() > opts_.max_output) return;
    const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) {
      c.dead = true;
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
      return;
    }
    for (ssize_t i = 0; i < n && !c.closing && !c.dead; ++i) {
      const char ch = buf[i];
      bool complete = false;
      if (c.depth == 0 && !c.in_string && (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n')) {
        complete = !c.cur.empty();  // a bare scalar ends at whitespace
      } else {
        c.cur += ch;
        if (c.in_string) {
          if (c.escape) {
            c.escape = false;
          } else if (ch == '\\') {
            c.escape = true;
          } else if (ch == '"') {
            c.in_string = false;
          }
        } else if (ch == '"') {
          c.in_string = true;
        } else if (ch == '{' || ch == '[') {
          if (++c.depth > opts_.max_depth) {
            send(c, error_reply("GenericError", fmt::format("message nested deeper than {} levels; closing the "
                                                            "connection", opts_.max_depth)));
            c.closing = true;
            c.cur.clear();
            write_client(c);
            return;
          }
        } else if (ch == '}' || ch == ']') {
          --c.depth;
          complete = c.depth <= 0;
        }
      }
      if (c.cur.size() > opts_.max_message) {
        send(c, error_reply("GenericError",
                            fmt::format("message longer than {} bytes; closing the connection", opts_.max_message)));
        c.closing = true;
        c.cur.clear();
        write_client(c);
        return;
      }
      if (complete) {
        std::string msg;
        msg.swap(c.cur);
        c.depth = 0;
        c.in_string = c.escape = false;
        handle_message(c, msg);
      }
    }
  }
}

void QmpServer::handle_message(Client& c, const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return send(c, error_reply("GenericError", "JSON parse error: the message is not valid JSON"));
  }
  if (!j.is_object()) return send(c, error_reply("GenericError", "QMP input must be a JSON object"));
  json reply;
  const bool has_id = j.contains("id");
  auto answer = [&](json r) {
    if (has_id) r["id"] = j["id"];
    send(c, r);
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "execute" && it.key() != "arguments" && it.key() != "id" && it.key() != "exec-oob") {
      return answer(error_reply("GenericError", fmt::format("QMP input member '{}' is unexpected", it.key())));
    }
  }
  if (j.contains("exec-oob")) {
    return answer(error_reply("GenericError", "QMP input member 'exec-oob' is not supported (no 'oob' capability)"));
  }
  if (!j.contains("execute")) return answer(error_reply("GenericError", "QMP input lacks member 'execute'"));
  if (!j["execute"].is_string()) {
    return answer(error_reply("GenericError", "QMP input member 'execute' must be a string"));
  }
  const std::string cmd = j["execute"].get<std::string>();
  json args = json::object();
  if (j.contains("arguments")) {
    if (!j["arguments"].is_object()) {
      return answer(error_reply("GenericError", "QMP input member 'arguments' must be an object"));
    }
    args = j["arguments"];
  }
  if (cmd == "qmp_capabilities") {
    if (c.negotiated) {
      return answer(error_reply("CommandNotFound", "Capabilities negotiation is already complete, command ignored"));
    }
    for (auto it = args.begin(); it != args.end(); ++it) {
      if (it.key() != "enable") return answer(error_reply("GenericError", fmt::format("Parameter '{}' is unexpected", it.key())));
    }
    if (args.contains("enable")) {
      const json& en = args["enable"];
      if (!en.is_array()) return answer(error_reply("GenericError", "Parameter 'enable' expects array"));
      if (!en.empty()) {
        return answer(error_reply("GenericError", "Capability 'oob' not available: this server offers none"));
      }
    }
    c.negotiated = true;
    return answer(json{{"return", json::object()}});
  }
  if (!c.negotiated) {
    return answer(error_reply("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"));
  }
  CommandResult r;
  try {
    r = commands_.execute(cmd, args);
  } catch (const std::exception& e) {  // a bug must not take the daemon down
    r = CommandResult::error(fmt::format("{}: internal error: {}", cmd, e.what()));
  }
  if (!r.ok) {
    spdlog::info("control: {} refused: {}", cmd, r.desc);
    return answer(error_reply(r.error_class, r.desc));
  }
  if (cmd == "add-export" || cmd == "remove-export") spdlog::info("control: {} done", cmd);
  answer(json{{"return", std::move(r.value)}});
  if (r.quit) {
    c.closing = true;
    write_client(c);
    quit_requested_ = true;
  }
}

void QmpServer::run() {
  std::vector<pollfd> pfds;
  for (;;) {
    {
      std::lock_guard lk(mu_);
      if (stopping_) break;
    }
    pfds.clear();
    pfds.push_back({listen_.get(), POLLIN, 0});
    pfds.push_back({wake_.get(), POLLIN, 0});
    for (auto& c : clients_) {
      short ev = 0;
      if (!c->closing && c->out.size() <= opts_.max_output) ev |= POLLIN;
      if (!c->out.empty()) ev |= POLLOUT;
      pfds.push_back({c->fd.get(), ev, 0});
    }
    const int r = ::poll(pfds.data(), pfds.size(), 1000);
    if (r < 0 && errno != EINTR) {
      spdlog::error("control: poll: {}", std::strerror(errno));
      break;
    }
    if ((pfds[1].revents & POLLIN) != 0) {
      uint64_t v;
      (void)!::read(wake_.get(), &v, sizeof v);
    }
    // Events to every negotiated client; one over its output bound misses them.
    std::deque<std::string> events;
    size_t dropped = 0;
    {
      std::lock_guard lk(mu_);
      events.swap(events_);
      dropped = std::exchange(dropped_events_, 0);
    }
    if (dropped > 0) spdlog::warn("control: {} events dropped (queue full)", dropped);
    for (const auto& e : events) {
      for (auto& c : clients_) {
        if (c->negotiated && !c->dead && !c->closing && c->out.size() <= opts_.max_output) c->out += e;
      }
    }
    for (size_t i = 0; i < clients_.size(); ++i) {
      Client& c = *clients_[i];
      const short re = i + 2 < pfds.size() ? pfds[i + 2].revents : 0;
      if ((re & (POLLERR | POLLNVAL)) != 0) c.dead = true;
      if ((re & (POLLIN | POLLHUP)) != 0) read_client(c);
      if (!c.out.empty()) write_client(c);
      if (!c.negotiated && !c.closing && now_ms() - c.connected_ms > opts_.negotiation_timeout_ms) {
        send(c, error_reply("GenericError", "no capabilities negotiation in time; closing the connection"));
        c.closing = true;
        write_client(c);
      }
    }
    std::erase_if(clients_, [](const std::unique_ptr<Client>& c) { return c->dead; });
    if ((pfds[0].revents & POLLIN) != 0) accept_clients();
    {
      std::lock_guard lk(mu_);
      nclients_ = clients_.size();
    }
    if (quit_requested_) {
      quit_requested_ = false;
      if (on_quit_) on_quit_();
    }
  }
}

}  // namespace iceblk::control
