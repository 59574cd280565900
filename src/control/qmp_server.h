// The QMP control socket (docs/control.md): a unix socket (mode 0600) on which
// several clients speak QEMU's Machine Protocol - greeting, qmp_capabilities,
// {"execute", "arguments", "id"} answered by {"return"} or {"error": {"class",
// "desc"}}, and asynchronous events - to add and remove exports, query the engine
// and read statistics while the daemon serves its VMs.
//
// One thread runs a poll loop over non-blocking sockets: a client that sends
// garbage, never reads, or floods gets an error and is disconnected without
// disturbing the other clients or any VM's data path. Commands run on that thread
// one at a time (add-export/remove-export take as long as binding or draining).
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "base/unique_fd.h"
#include "control/commands.h"
#include "daemon/daemon.h"

namespace iceblk::control {

struct QmpOptions {
  size_t max_clients = 16;             // more: refused with an error (and a PEER_REFUSED event)
  size_t max_message = 64 * 1024;      // one JSON message; longer: error, then disconnect
  int max_depth = 64;                  // nesting of one message; deeper: error, then disconnect
  size_t max_output = 4 * 1024 * 1024;  // queued for a client: input is not read meanwhile, events dropped
  int negotiation_timeout_ms = 30000;  // no qmp_capabilities by then: disconnect
};

class QmpServer final : public daemon::DaemonObserver {
 public:
  // Binds `path` (mode 0600; a stale socket file is replaced, a live one or a
  // non-socket refused) and registers as the daemon's observer. `on_quit` runs on
  // the server thread after the reply to "quit" was sent.
  static Result<std::unique_ptr<QmpServer>> create(const std::string& path, daemon::Daemon& d, QmpOptions opts,
                                                   std::function<void()> on_quit);
  ~QmpServer() override;  // stop()
  QmpServer(const QmpServer&) = delete;
  QmpServer& operator=(const QmpServer&) = delete;

  Status start();  // the poll thread
  // Thread-safe, idempotent: disconnect every client, join, remove the socket file,
  // unregister from the daemon.
  void stop();

  // Queue an event for every negotiated client. Thread-safe, never blocks on a client.
  void emit(const std::string& event, nlohmann::json data);

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] size_t clients() const;

  // DaemonObserver
  void export_connected(const std::string& name) override;
  void export_disconnected(const std::string& name) override;
  void keyslot_changed(uint32_t slot, const std::string& vm, bool programmed) override;
  void peer_refused(const std::string& channel, const std::string& export_name, const std::string& reason) override;

 private:
  struct Client;
  QmpServer(std::string path, daemon::Daemon& d, QmpOptions opts, std::function<void()> on_quit, UniqueFd listen,
            UniqueFd wake);
  void run();
  void accept_clients();
  void read_client(Client& c);
  void write_client(Client& c);
  void handle_message(Client& c, const std::string& text);
  void send(Client& c, const nlohmann::json& msg);
  void refuse(int fd, const std::string& reason);

  std::string path_;
  daemon::Daemon& daemon_;
  Commands commands_;
  QmpOptions opts_;
  std::function<void()> on_quit_;
  UniqueFd listen_;
  UniqueFd wake_;  // eventfd: events queued or stop requested
  std::thread thread_;
  std::vector<std::unique_ptr<Client>> clients_;  // server thread only
  mutable std::mutex mu_;                         // events_, stopping_, nclients_
  std::deque<std::string> events_;                // serialized, newline-terminated
  size_t dropped_events_ = 0;
  size_t nclients_ = 0;
  bool stopping_ = false;
  bool stopped_ = false;
  bool quit_requested_ = false;
};

}  // namespace iceblk::control
