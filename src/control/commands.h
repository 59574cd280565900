// The control socket's commands (docs/control.md), independent of the transport:
// execute() takes a command name and its arguments and returns either the QMP
// "return" value or an error (class + desc). Every argument is checked (unknown
// names, missing ones, wrong types) before anything changes.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "daemon/daemon.h"

namespace iceblk::control {

struct CommandResult {
  bool ok = true;
  nlohmann::json value = nlohmann::json::object();  // "return" when ok
  std::string error_class = "GenericError";
  std::string desc;
  bool quit = false;  // the server stops after sending the reply

  static CommandResult error(std::string desc, std::string cls = "GenericError") {
    CommandResult r;
    r.ok = false;
    r.error_class = std::move(cls);
    r.desc = std::move(desc);
    return r;
  }
};

class Commands {
 public:
  explicit Commands(daemon::Daemon& d) : daemon_(d) {}
  CommandResult execute(const std::string& name, const nlohmann::json& args);
  [[nodiscard]] static std::vector<std::string> names();

 private:
  CommandResult add_export(const nlohmann::json& args);
  CommandResult remove_export(const nlohmann::json& args);
  CommandResult query_exports(const nlohmann::json& args);
  CommandResult query_engine(const nlohmann::json& args);
  CommandResult query_stats(const nlohmann::json& args);
  CommandResult set_log_level(const nlohmann::json& args);

  daemon::Daemon& daemon_;
};

}  // namespace iceblk::control
