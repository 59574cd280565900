#include "ctl.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/unique_fd.h"
#include "control/qmp_line_reader.h"

namespace iceblk::cli {

using nlohmann::json;

namespace {

int die(const std::string& msg) {
  std::fprintf(stderr, "iceblk: %s\n", msg.c_str());
  return 1;
}

class Conn {
 public:
  std::string error;
  bool open(const std::string& path, int timeout_ms) {
    timeout_ms_ = timeout_ms;
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) return fail_with(fmt::format("control socket path {} is too long", path));
    std::memcpy(addr.sun_path, path.data(), path.size());
    if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return fail_with(fmt::format("cannot connect to the control socket {}: {} (is iceblkd running with --control?)",
                                   path, std::strerror(errno)));
    }
    reader_.reset(fd_.get());
    auto g = read();
    if (!g) return false;
    if (g->contains("error")) return fail_with(fmt::format("{}: {}", path, (*g)["error"].value("desc", "refused")));
    if (!g->contains("QMP")) return fail_with(fmt::format("{} is not a QMP server", path));
    auto r = call("qmp_capabilities", json::object());
    return r.has_value();
  }
  std::optional<json> call(const std::string& cmd, const json& args) {
    json m{{"execute", cmd}, {"arguments", args}, {"id", "iceblk-ctl"}};
    const std::string s = m.dump() + "\n";
    if (::send(fd_.get(), s.data(), s.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(s.size())) {
      fail_with("the control socket closed");
      return std::nullopt;
    }
    for (;;) {
      auto r = read();
      if (!r) return std::nullopt;
      if (r->contains("event")) continue;
      if (r->contains("error")) {
        fail_with((*r)["error"].value("desc", "error"));
        return std::nullopt;
      }
      return (*r)["return"];
    }
  }

 private:
  bool fail_with(std::string e) {
    error = std::move(e);
    return false;
  }
  // A line that is not JSON is refused, not guessed at.
  std::optional<json> read() {
    std::string line;
    switch (reader_.next(line, timeout_ms_)) {
      case control::QmpLineReader::Outcome::kTimeout:
        fail_with("no reply from the control socket in time");
        return std::nullopt;
      case control::QmpLineReader::Outcome::kClosed:
        fail_with("the control socket closed the connection");
        return std::nullopt;
      case control::QmpLineReader::Outcome::kLine:
        break;
    }
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) {
      fail_with("the control socket sent something that is not JSON");
      return std::nullopt;
    }
    return j;
  }
  UniqueFd fd_;
  control::QmpLineReader reader_;
  int timeout_ms_ = 30000;
};

// key=value: true/false -> boolean, digits -> integer, [..] {..} "..." -> JSON,
// a,b for "algorithms" -> array, anything else a string.
std::optional<json> parse_args(const std::vector<std::string>& kv, std::string& err) {
  json args = json::object();
  for (const auto& a : kv) {
    const size_t eq = a.find('=');
    if (eq == std::string::npos || eq == 0) {
      err = fmt::format("argument '{}' is not key=value", a);
      return std::nullopt;
    }
    const std::string k = a.substr(0, eq), v = a.substr(eq + 1);
    if (v == "true" || v == "false") {
      args[k] = v == "true";
    } else if (!v.empty() && v.find_first_not_of("0123456789") == std::string::npos && v.size() < 20) {
      args[k] = std::stoull(v);
    } else if (!v.empty() && (v[0] == '[' || v[0] == '{' || v[0] == '"')) {
      json j = json::parse(v, nullptr, false);
      if (j.is_discarded()) {
        err = fmt::format("argument '{}': value is not valid JSON", k);
        return std::nullopt;
      }
      args[k] = j;
    } else if (k == "algorithms") {
      json arr = json::array();
      size_t pos = 0;
      while (pos <= v.size()) {
        size_t c = v.find(',', pos);
        if (c == std::string::npos) c = v.size();
        if (c > pos) arr.push_back(v.substr(pos, c - pos));
        pos = c + 1;
      }
      args[k] = arr;
    } else {
      args[k] = v;
    }
  }
  return args;
}

std::string str(const json& j) { return j.is_string() ? j.get<std::string>() : j.dump(); }

void print_exports(const json& r) {
  if (r.empty()) {
    std::printf("no exports\n");
    return;
  }
  std::printf("%-16s %-9s %-6s %-10s %-8s %-13s %-6s %s\n", "NAME", "STATE", "QUEUES", "SIZE", "KEYS", "SLOTS",
              "CONNS", "SOCKET");
  for (const auto& e : r) {
    const bool ice = e.value("ice", false);
    const std::string slots = ice ? fmt::format("[{}, {})", e["slot_offset"].get<uint64_t>(),
                                                e["slot_offset"].get<uint64_t>() + e["max_slots"].get<uint64_t>())
                                  : "-";
    std::printf("%-16s %-9s %-6s %-10s %-8s %-13s %-6s %s\n", str(e["name"]).c_str(),
                e.value("connected", false) ? "connected" : "idle", str(e["num_queues"]).c_str(),
                fmt::format("{}M", e["size"].get<uint64_t>() >> 20).c_str(),
                ice ? str(e["keys"]).c_str() : "no-ice", slots.c_str(), str(e["connections"]).c_str(),
                str(e["socket"]).c_str());
  }
}

void print_engine(const json& r) {
  std::printf("engine: %s slots, %s programmed%s\n", str(r["num-slots"]).c_str(), str(r["programmed"]).c_str(),
              r.value("allow-ecb", false) ? ", ECB allowed" : "");
  std::printf("%-16s %-13s %-10s %s\n", "VM", "SLOTS", "PROGRAMMED", "KEYS (slot: algorithm/data unit, generation)");
  for (const auto& vm : r["vms"]) {
    std::string keys;
    for (const auto& s : vm["slots"]) {
      keys += fmt::format("{}{}: {}/{} g{}", keys.empty() ? "" : ", ", str(s["slot"]), str(s["algorithm"]),
                          str(s["data-unit-size"]), str(s["generation"]));
    }
    const uint64_t off = vm["slot_offset"].get<uint64_t>();
    std::printf("%-16s %-13s %-10s %s\n", str(vm["name"]).c_str(),
                fmt::format("[{}, {})", off, off + vm["max_slots"].get<uint64_t>()).c_str(),
                str(vm["programmed"]).c_str(), keys.empty() ? "-" : keys.c_str());
  }
  for (const auto& s : r["unassigned"]) {
    std::printf("%-16s %-13s %-10s %s/%s g%s\n", "(no VM)", str(s["slot"]).c_str(), "1", str(s["algorithm"]).c_str(),
                str(s["data-unit-size"]).c_str(), str(s["generation"]).c_str());
  }
}

void print_stats(const json& r) {
  std::printf("%-16s %-5s %10s %10s %12s %12s %12s %12s %7s %9s\n", "EXPORT", "QUEUE", "READS", "WRITES", "READ B",
              "WRITTEN B", "ENCRYPTED B", "DECRYPTED B", "ERRORS", "AVG LAT");
  for (const auto& e : r["exports"]) {
    for (const auto& q : e["queues"]) {
      uint64_t errors = 0;
      for (const auto& [k, v] : q["errors"].items()) errors += v.get<uint64_t>();
      const uint64_t n = q["latency"]["count"].get<uint64_t>();
      const double avg_us = n ? double(q["latency"]["sum-ns"].get<uint64_t>()) / double(n) / 1000.0 : 0.0;
      std::printf("%-16s %-5s %10s %10s %12s %12s %12s %12s %7llu %7.0fus\n", str(e["name"]).c_str(),
                  str(q["queue"]).c_str(), str(q["requests"]["read"]).c_str(), str(q["requests"]["write"]).c_str(),
                  str(q["bytes"]["read"]).c_str(), str(q["bytes"]["write"]).c_str(),
                  str(q["bytes-encrypted"]).c_str(), str(q["bytes-decrypted"]).c_str(),
                  static_cast<unsigned long long>(errors), avg_us);
    }
    std::printf("%-16s keys programmed %s, evicted %s\n", "", str(e["keys-programmed"]).c_str(),
                str(e["keys-evicted"]).c_str());
  }
}

}  // namespace

CLI::App* add_ctl_command(CLI::App& app, CtlOptions& o) {
  auto* ctl = app.add_subcommand("ctl", "talk to iceblkd's QMP control socket (docs/control.md)");
  ctl->footer(
      "Examples:\n"
      "  iceblk ctl -c /run/iceblkd.qmp query-exports\n"
      "  iceblk ctl -c /run/iceblkd.qmp add-export name=vm3 socket=/tmp/vm3.sock image=vm3.img size=1G "
      "slot_offset=48 max_slots=16\n"
      "  iceblk ctl -c /run/iceblkd.qmp remove-export name=vm3\n"
      "  iceblk ctl -c /run/iceblkd.qmp query-stats format=prometheus");
  ctl->add_option("--control,-c", o.socket, "iceblkd's control socket (--control)")->required();
  ctl->add_option("command", o.command,
                  "add-export, remove-export, query-exports, query-engine, query-stats, set-log-level, quit, ...")
      ->required();
  ctl->add_option("args", o.args, "key=value arguments");
  ctl->add_flag("--json", o.json, "print the QMP return value as JSON");
  ctl->add_option("--timeout", o.timeout, "seconds to wait for the reply");
  return ctl;
}

int run_ctl(const CtlOptions& o) {
  std::string err;
  auto args = parse_args(o.args, err);
  if (!args) return die(err);
  Conn c;
  if (!c.open(o.socket, static_cast<int>(o.timeout * 1000))) return die(c.error);
  auto r = c.call(o.command, *args);
  if (!r) return die(c.error);
  if (o.json) {
    std::printf("%s\n", r->dump(2).c_str());
  } else if (o.command == "query-exports") {
    print_exports(*r);
  } else if (o.command == "query-engine") {
    print_engine(*r);
  } else if (o.command == "query-stats" && r->contains("text")) {
    std::fputs((*r)["text"].get<std::string>().c_str(), stdout);
  } else if (o.command == "query-stats") {
    print_stats(*r);
  } else if (r->is_object() && r->empty()) {
    std::printf("%s: ok\n", o.command.c_str());
  } else {
    std::printf("%s\n", r->dump(2).c_str());
  }
  return 0;
}

}  // namespace iceblk::cli
