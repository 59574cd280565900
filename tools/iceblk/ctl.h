// `iceblk ctl`: a QMP client for iceblkd's control socket (docs/control.md).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace iceblk::cli {

struct CtlOptions {
  std::string socket;                // -c, the control socket
  std::string command;               // add-export, query-engine, ...
  std::vector<std::string> args;     // key=value
  bool json = false;                 // print the QMP return value as JSON
  double timeout = 30;               // seconds to wait for the reply
};

CLI::App* add_ctl_command(CLI::App& app, CtlOptions& o);
int run_ctl(const CtlOptions& o);

}  // namespace iceblk::cli
