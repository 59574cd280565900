// A minimal raw QMP client for the tests: newline-delimited JSON over a unix
// socket, events collected aside from command replies.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/unique_fd.h"
#include "control/qmp_line_reader.h"

namespace iceblk::testing {

class QmpClient {
 public:
  // Connects and reads the greeting (greeting() is null if none came).
  bool connect(const std::string& path, int timeout_ms = 5000);
  // connect() + qmp_capabilities.
  bool open(const std::string& path);
  [[nodiscard]] const nlohmann::json& greeting() const { return greeting_; }

  bool send_raw(const std::string& bytes);
  // The next message (event or reply); nullopt on timeout or EOF.
  std::optional<nlohmann::json> read(int timeout_ms = 10000);
  // Send a command; return its reply (events seen meanwhile go to events()).
  nlohmann::json execute(const std::string& cmd, const nlohmann::json& args = nullptr,
                         const nlohmann::json& id = nullptr);
  // The reply to something sent with send_raw().
  nlohmann::json reply(int timeout_ms = 10000);
  // Wait for an event named `name` (optionally with data[key] == value); consumed.
  std::optional<nlohmann::json> wait_event(const std::string& name, const std::string& key = {},
                                           const nlohmann::json& value = nullptr, int timeout_ms = 10000);
  // True once the server closed the connection (EOF) within timeout_ms.
  bool closed_by_peer(int timeout_ms = 5000);
  [[nodiscard]] std::vector<nlohmann::json>& events() { return events_; }
  [[nodiscard]] int fd() const { return fd_.get(); }
  void close() { fd_.reset(); }

 private:
  UniqueFd fd_;
  control::QmpLineReader reader_;
  nlohmann::json greeting_;
  std::vector<nlohmann::json> events_;
};

}  // namespace iceblk::testing
