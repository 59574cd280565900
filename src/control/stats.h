// query-stats: the daemon's per-export and per-queue counters as QMP JSON or as
// Prometheus text exposition format.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "daemon/daemon.h"

namespace iceblk::control {

nlohmann::json stats_json(const std::vector<daemon::ExportView>& exports);
std::string stats_prometheus(const std::vector<daemon::ExportView>& exports);

}  // namespace iceblk::control
