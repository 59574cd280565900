// iceblkd as a library: one shared ICE engine, one vhost-user server per export,
// and the secure world (out-of-band key channels) for exports that use it.
// tools/iceblkd is a thin command line around this; tests embed it directly.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"
#include "daemon/config.h"
#include "daemon/vhost_blk_device.h"
#include "ice/engine.h"
#include "secure_world/secure_world.h"
#include "vhost_user/server.h"

namespace iceblk::daemon {

class Daemon {
 public:
  // Validates the config, creates the engine and registers every export's range,
  // opens (or creates) the images, binds every socket. Nothing is left bound on error.
  static Result<std::unique_ptr<Daemon>> create(DaemonConfig cfg);
  ~Daemon();  // shutdown()

  // Serve every export (one thread each) until shutdown(). Non-blocking.
  Status start();
  // Thread-safe, idempotent. Ends every connection (in-flight requests finish, the
  // devices reset, which evicts and zeroises in-band keys), flushes the images,
  // stops the secure world, removes the sockets, zeroises every key in the engine.
  void shutdown();

  [[nodiscard]] ice::Engine& engine() { return *engine_; }
  [[nodiscard]] const DaemonConfig& config() const { return cfg_; }
  [[nodiscard]] size_t num_exports() const { return exports_.size(); }
  [[nodiscard]] blk::BlkDevice& device(size_t i) { return exports_[i]->device->blk(); }
  [[nodiscard]] VmId vm(size_t i) const { return exports_[i]->vm; }
  [[nodiscard]] secure_world::SecureWorld* secure_world() { return secure_world_.get(); }

 private:
  struct Export {
    ExportConfig cfg;
    VmId vm{0};
    std::shared_ptr<backend::BlockBackend> backend;
    std::unique_ptr<VhostBlkDevice> device;
    std::unique_ptr<vhost_user::Server> server;
    std::thread thread;
  };
  explicit Daemon(DaemonConfig cfg) : cfg_(std::move(cfg)) {}

  DaemonConfig cfg_;
  std::shared_ptr<ice::Engine> engine_;
  std::vector<std::unique_ptr<Export>> exports_;
  std::unique_ptr<secure_world::SecureWorld> secure_world_;
  std::mutex mu_;
  bool stopped_ = false;
  bool started_ = false;
};

}  // namespace iceblk::daemon
