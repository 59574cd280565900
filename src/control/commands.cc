#include "control/commands.h"

#include <map>

#include "base/log.h"
#include "control/stats.h"
#include "ice/crypto_mode.h"

namespace iceblk::control {

using nlohmann::json;

namespace {

enum class Type { kString, kBool };

struct Param {
  const char* name;
  Type type;
  bool required;
};

const char* type_name(Type t) { return t == Type::kString ? "string" : "boolean"; }

// QMP-style argument checks: an object, no unknown member, every required one,
// each of its type. Returns the error desc, empty when fine.
std::string check_args(const json& args, std::initializer_list<Param> params) {
  if (!args.is_object()) return "'arguments' must be an object";
  for (auto it = args.begin(); it != args.end(); ++it) {
    bool known = false;
    for (const Param& p : params) known = known || it.key() == p.name;
    if (!known) return fmt::format("Parameter '{}' is unexpected", it.key());
  }
  for (const Param& p : params) {
    if (!args.contains(p.name)) {
      if (p.required) return fmt::format("Parameter '{}' is missing", p.name);
      continue;
    }
    const json& v = args.at(p.name);
    const bool ok = p.type == Type::kString ? v.is_string() : v.is_boolean();
    if (!ok) return fmt::format("Parameter '{}' expects {}", p.name, type_name(p.type));
  }
  return {};
}

const char* keys_name(blk::KeyMode m) { return m == blk::KeyMode::kInBand ? "inband" : "secure-world"; }

const char* io_engine_name(backend::FileEngine e) {
  switch (e) {
    case backend::FileEngine::kSync: return "sync";
    case backend::FileEngine::kIoUring: return "io_uring";
    default: return "auto";
  }
}

}  // namespace

std::vector<std::string> Commands::names() {
  return {"qmp_capabilities", "query-commands", "query-version", "add-export", "remove-export", "query-exports",
          "query-engine", "query-stats", "set-log-level", "quit"};
}

CommandResult Commands::execute(const std::string& name, const json& args) {
  if (name == "add-export") return add_export(args);
  if (name == "remove-export") return remove_export(args);
  if (name == "query-exports") return query_exports(args);
  if (name == "query-engine") return query_engine(args);
  if (name == "query-stats") return query_stats(args);
  if (name == "set-log-level") return set_log_level(args);
  if (name == "query-commands" || name == "query-version" || name == "quit") {
    if (auto e = check_args(args, {}); !e.empty()) return CommandResult::error(e);
    CommandResult r;
    if (name == "query-commands") {
      r.value = json::array();
      for (const auto& n : names()) r.value.push_back(json{{"name", n}});
    } else if (name == "query-version") {
      r.value = json{{"qemu", {{"major", 0}, {"minor", 1}, {"micro", 0}}}, {"package", "iceblkd"}};
    } else {
      r.quit = true;
    }
    return r;
  }
  return CommandResult::error(fmt::format("The command {} has not been found", name), "CommandNotFound");
}

CommandResult Commands::add_export(const json& args) {
  if (!args.is_object()) return CommandResult::error("add-export: 'arguments' must be an object");
  // The same fields, types and checks as a config-file export.
  auto ec = daemon::parse_export_json(args.dump(), "add-export");
  if (!ec) return CommandResult::error(ec.error().message);
  if (ec->name.empty()) return CommandResult::error("add-export: 'name' is required");
  const std::string name = ec->name;
  if (auto st = daemon_.add_export(std::move(*ec)); !st) {
    return CommandResult::error(fmt::format("add-export: {}", st.error().message));
  }
  return {};
}

CommandResult Commands::remove_export(const json& args) {
  if (auto e = check_args(args, {{"name", Type::kString, true}}); !e.empty()) return CommandResult::error(e);
  if (auto st = daemon_.remove_export(args["name"].get<std::string>()); !st) {
    return CommandResult::error(fmt::format("remove-export: {}", st.error().message),
                                st.error().code == Errc::kNotFound ? "DeviceNotFound" : "GenericError");
  }
  return {};
}

CommandResult Commands::query_exports(const json& args) {
  if (auto e = check_args(args, {}); !e.empty()) return CommandResult::error(e);
  CommandResult r;
  r.value = json::array();
  for (const auto& v : daemon_.exports_view()) {
    const auto& c = v.cfg;
    json algs = json::array();
    for (const auto& [alg, ks] : c.algorithms) algs.push_back(ice::algorithm_name(alg, ks));
    json e{{"name", c.name},
           {"socket", c.socket},
           {"image", c.image},
           {"size", v.device->capacity_sectors() * 512},
           {"readonly", v.device->read_only()},
           {"num_queues", c.num_queues},
           {"queue_size", c.queue_size},
           {"ice", c.ice},
           {"serial", c.serial},
           {"io_engine", io_engine_name(c.io_engine)},
           {"connected", v.connected},
           {"connections", v.connections},
           {"offered-features", v.device->offered_features()},
           {"negotiated-features", v.device->negotiated_features()}};
    if (c.ice) {
      e["keys"] = keys_name(c.keys);
      e["slot_offset"] = c.slot_offset;
      e["max_slots"] = c.max_slots;
      e["algorithms"] = std::move(algs);
      e["vm-id"] = v.vm.value;
      if (c.keys == blk::KeyMode::kOutOfBand) e["secure_world_socket"] = c.secure_world_socket;
    }
    r.value.push_back(std::move(e));
  }
  return r;
}

CommandResult Commands::query_engine(const json& args) {
  if (auto e = check_args(args, {}); !e.empty()) return CommandResult::error(e);
  ice::Engine& engine = daemon_.engine();
  const auto views = daemon_.exports_view();
  // What a programmed slot shows: its mode and generation. Never key bytes or
  // anything derived from them.
  auto slot_json = [&](uint32_t phys, uint32_t base) -> std::optional<json> {
    auto k = engine.lookup(PhysSlot{phys});
    if (!k) return std::nullopt;
    const ice::CryptoMode& m = (*k)->key.mode();
    return json{{"slot", phys},
                {"index", phys - base},
                {"algorithm", ice::algorithm_name(m.alg, m.key_size)},
                {"data-unit-size", m.data_unit_size},
                {"generation", (*k)->generation}};
  };
  std::vector<bool> owned(engine.num_slots(), false);
  json vms = json::array();
  uint32_t used = 0;
  for (const auto& v : views) {
    if (!v.cfg.ice) continue;
    json slots = json::array();
    for (uint32_t i = 0; i < v.cfg.max_slots; ++i) {
      const uint32_t phys = v.cfg.slot_offset + i;
      if (phys >= owned.size()) break;
      owned[phys] = true;
      if (auto s = slot_json(phys, v.cfg.slot_offset)) {
        slots.push_back(std::move(*s));
        ++used;
      }
    }
    vms.push_back(json{{"name", v.cfg.name},
                       {"vm-id", v.vm.value},
                       {"keys", keys_name(v.cfg.keys)},
                       {"slot_offset", v.cfg.slot_offset},
                       {"max_slots", v.cfg.max_slots},
                       {"programmed", slots.size()},
                       {"slots", std::move(slots)}});
  }
  json unowned = json::array();
  for (uint32_t s = 0; s < owned.size(); ++s) {
    if (owned[s]) continue;
    if (auto j = slot_json(s, 0)) unowned.push_back(std::move(*j));
  }
  CommandResult r;
  r.value = json{{"num-slots", engine.num_slots()},
                 {"allow-ecb", engine.allow_ecb()},
                 {"programmed", used + unowned.size()},
                 {"vms", std::move(vms)},
                 {"unassigned", std::move(unowned)}};
  return r;
}

CommandResult Commands::query_stats(const json& args) {
  if (auto e = check_args(args, {{"export", Type::kString, false}, {"format", Type::kString, false}}); !e.empty()) {
    return CommandResult::error(e);
  }
  const std::string format = args.value("format", std::string("json"));
  if (format != "json" && format != "prometheus") {
    return CommandResult::error(fmt::format("Parameter 'format' must be \"json\" or \"prometheus\", not \"{}\"", format));
  }
  auto views = daemon_.exports_view();
  if (args.contains("export")) {
    const std::string want = args["export"].get<std::string>();
    std::erase_if(views, [&](const daemon::ExportView& v) { return v.cfg.name != want; });
    if (views.empty()) return CommandResult::error(fmt::format("query-stats: no export named '{}'", want), "DeviceNotFound");
  }
  CommandResult r;
  if (format == "prometheus") {
    r.value = json{{"format", "prometheus"}, {"text", stats_prometheus(views)}};
  } else {
    r.value = stats_json(views);
  }
  return r;
}

CommandResult Commands::set_log_level(const json& args) {
  if (auto e = check_args(args, {{"level", Type::kString, true}}); !e.empty()) return CommandResult::error(e);
  static const std::map<std::string, int> kLevels = {{"trace", 0}, {"debug", 1}, {"info", 2}, {"warn", 3},
                                                     {"error", 4}, {"critical", 5}, {"off", 6}};
  const std::string level = args["level"].get<std::string>();
  if (!kLevels.contains(level)) {
    return CommandResult::error(
        fmt::format("Parameter 'level' must be trace, debug, info, warn, error, critical or off, not \"{}\"", level));
  }
  log::set_level(level);
  spdlog::warn("log level set to {} over the control socket", level);
  return {};
}

}  // namespace iceblk::control
