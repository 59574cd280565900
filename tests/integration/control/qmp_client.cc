#include "integration/control/qmp_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

namespace iceblk::testing {

using nlohmann::json;

bool QmpClient::connect(const std::string& path, int timeout_ms) {
  fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return false;
  reader_.reset(fd_.get());
  auto g = read(timeout_ms);
  greeting_ = g ? *g : json();
  return g.has_value();
}

bool QmpClient::open(const std::string& path) {
  if (!connect(path)) return false;
  if (!greeting_.contains("QMP")) return false;
  return execute("qmp_capabilities").contains("return");
}

bool QmpClient::send_raw(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd_.get(), bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::optional<json> QmpClient::read(int timeout_ms) {
  std::string line;
  if (reader_.next(line, timeout_ms) != control::QmpLineReader::Outcome::kLine) return std::nullopt;
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded()) return json{{"unparsable", line}};  // the tests assert on it
  return j;
}

json QmpClient::reply(int timeout_ms) {
  for (;;) {
    auto m = read(timeout_ms);
    if (!m) return json{{"no-reply", true}};
    if (m->contains("event")) {
      events_.push_back(std::move(*m));
      continue;
    }
    return *m;
  }
}

json QmpClient::execute(const std::string& cmd, const json& args, const json& id) {
  json m{{"execute", cmd}};
  if (!args.is_null()) m["arguments"] = args;
  if (!id.is_null()) m["id"] = id;
  if (!send_raw(m.dump() + "\n")) return json{{"send-failed", true}};
  return reply();
}

std::optional<json> QmpClient::wait_event(const std::string& name, const std::string& key, const json& value,
                                          int timeout_ms) {
  auto match = [&](const json& e) {
    return e["event"] == name && (key.empty() || (e["data"].contains(key) && e["data"][key] == value));
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    for (auto it = events_.begin(); it != events_.end(); ++it) {
      if (match(*it)) {
        json e = *it;
        events_.erase(it);
        return e;
      }
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    auto m = read(static_cast<int>(left.count()));
    if (!m) return std::nullopt;
    if (m->contains("event")) events_.push_back(std::move(*m));
  }
}

bool QmpClient::closed_by_peer(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string line;
  while (!reader_.closed()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    (void)reader_.next(line, static_cast<int>(left.count()));  // lines before the close do not matter
  }
  return true;
}

}  // namespace iceblk::testing
