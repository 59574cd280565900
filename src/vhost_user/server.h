// A vhost-user back-end listening on a unix socket path. Serves one front-end at a
// time (others wait in the listen backlog); when a front-end disconnects or breaks
// the protocol its rings are stopped, the device is reset and the next front-end
// is accepted. A malformed message closes only that connection.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/result.h"
#include "base/unique_fd.h"
#include "vhost_user/backend.h"

namespace iceblk::vhost_user {

class Server {
 public:
  // Bind and listen on `socket_path`. If a live server answers on that path:
  // kBusy "socket path in use". A stale socket file (nobody listening) is removed;
  // a path that exists but is not a socket is refused (kBusy). `device` must
  // outlive the server.
  static Result<std::unique_ptr<Server>> create(const std::string& socket_path, Backend& device);
  // Serve a socket that is already listening (systemd socket activation, or an
  // inherited fd as with QEMU's addr.type=fd). It must be a listening AF_UNIX
  // stream socket; `label` names it in logs. The socket's file belongs to whoever
  // created it and is never removed.
  static Result<std::unique_ptr<Server>> adopt(UniqueFd listen_fd, const std::string& label, Backend& device);
  ~Server();  // shutdown() and remove the socket file
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Accept and serve front-ends until shutdown(). Call from one thread only.
  // Returns an error only if the listening socket itself fails.
  Status run();

  // Thread-safe, idempotent: stop accepting, end the current connection (rings
  // drained, device reset), make run() return. The socket file is removed when
  // run() returns (or by the destructor if run() never ran).
  void shutdown();

  [[nodiscard]] const std::string& path() const { return path_; }
  // Called on run()'s thread when a front-end was accepted (connected true, error
  // empty) and when its connection ended (false; `error` says why when the
  // front-end broke the protocol, empty for an orderly end). Set it before run().
  using ConnectionObserver = std::function<void(bool connected, const std::string& error)>;
  void set_connection_observer(ConnectionObserver obs) { observer_ = std::move(obs); }
  // Number of front-ends accepted so far.
  [[nodiscard]] uint64_t connections_accepted() const { return accepted_.load(); }

 private:
  Server(std::string path, Backend& device, UniqueFd listen_fd, UniqueFd stop_fd)
      : path_(std::move(path)), device_(device), listen_(std::move(listen_fd)), stop_(std::move(stop_fd)) {}
  void remove_socket_file();

  std::string path_;
  Backend& device_;
  UniqueFd listen_;
  UniqueFd stop_;  // eventfd, readable once shutdown() was called
  std::atomic<uint64_t> accepted_{0};
  std::atomic<bool> removed_{false};  // adopt(): true from the start (not ours)
  ConnectionObserver observer_;
};

}  // namespace iceblk::vhost_user
