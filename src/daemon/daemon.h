// iceblkd as a library: one shared ICE engine, one vhost-user server per export,
// and the secure world (out-of-band key channels) for exports that use it.
// tools/iceblkd is a thin command line around this; tests embed it directly.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
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

// What the control socket learns as it happens. Called on the thread where it
// happened (an export's server thread, a queue worker, the secure world): must be
// cheap, must not block and must not call back into the Daemon.
class DaemonObserver {
 public:
  virtual ~DaemonObserver() = default;
  virtual void export_connected(const std::string& name) = 0;
  virtual void export_disconnected(const std::string& name) = 0;
  // A slot of VM `vm` (its export's name; empty if no VM owns it) gained or lost a key.
  virtual void keyslot_changed(uint32_t slot, const std::string& vm, bool programmed) = 0;
  // A peer was turned away: a front-end on `export_name` that broke the protocol.
  virtual void peer_refused(const std::string& channel, const std::string& export_name,
                            const std::string& reason) = 0;
};

// A consistent view of one live export, for the control socket.
struct ExportView {
  ExportConfig cfg;
  VmId vm{0};
  bool connected = false;
  uint64_t connections = 0;  // front-ends accepted so far
  uint64_t keys_programmed = 0;
  uint64_t keys_evicted = 0;
  std::shared_ptr<blk::BlkDevice> device;  // features, capacity, per-queue counters
};

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

  // Runtime exports (the control socket). add_export validates `ec` like a config
  // file export, against the engine and every live export (the error names the
  // conflict); on any error nothing is bound or created. Served at once if start()
  // ran. remove_export stops accepting, ends the connection (in-flight requests
  // complete, the device resets), evicts and zeroises the VM's slots, flushes the
  // image and removes the socket file; the other exports see nothing.
  Status add_export(ExportConfig ec);
  Status remove_export(const std::string& name);
  [[nodiscard]] std::vector<ExportView> exports_view();
  // Set before start(); `obs` must outlive the daemon's threads (or be unset first).
  void set_observer(DaemonObserver* obs) { observer_.store(obs); }

  [[nodiscard]] ice::Engine& engine() { return *engine_; }
  [[nodiscard]] const DaemonConfig& config() const { return cfg_; }  // not while exports change
  [[nodiscard]] size_t num_exports() const { return exports_.size(); }
  [[nodiscard]] blk::BlkDevice& device(size_t i) { return exports_[i]->device->blk(); }
  [[nodiscard]] VmId vm(size_t i) const { return exports_[i]->vm; }
  [[nodiscard]] secure_world::SecureWorld* secure_world() { return secure_world_.get(); }

 private:
  // Counters and state that threads other than the control one update.
  struct Live {
    std::atomic<bool> connected{false};
    std::atomic<uint64_t> keys_programmed{0};
    std::atomic<uint64_t> keys_evicted{0};
  };
  struct Export {
    ExportConfig cfg;
    VmId vm{0};
    std::shared_ptr<Live> live = std::make_shared<Live>();
    std::shared_ptr<blk::BlkDevice> blk;
    std::shared_ptr<backend::BlockBackend> backend;
    std::unique_ptr<VhostBlkDevice> device;
    std::unique_ptr<vhost_user::Server> server;
    std::thread thread;
    // A secure-world export added at runtime has a key service of its own (the
    // start-up ones share secure_world_).
    std::unique_ptr<secure_world::SecureWorld> own_secure_world;
  };
  explicit Daemon(DaemonConfig cfg) : cfg_(std::move(cfg)) {}
  // Opens the image (records a created one in `created`), registers the VM, makes
  // the device and binds the socket. On error the VM is unregistered again.
  Result<std::unique_ptr<Export>> make_export(const ExportConfig& ec, std::vector<std::string>& created,
                                              std::vector<secure_world::VmChannel>* channels,
                                              std::vector<ice::Capability>* sw_caps);
  void start_export(Export& e);
  void on_slot(const ice::SlotEvent& ev);
  void log_ice_counters(const Export& ex);

  DaemonConfig cfg_;
  std::shared_ptr<ice::Engine> engine_;
  std::shared_ptr<blk::BufferBudget> buffer_budget_;  // all exports' bounce buffers
  std::shared_ptr<ice::CryptPool> crypt_pool_;        // --crypto-threads (null: 0), all exports
  std::vector<std::unique_ptr<Export>> exports_;
  std::unique_ptr<secure_world::SecureWorld> secure_world_;
  std::mutex mu_;  // exports_, cfg_.exports, started_, stopped_
  std::atomic<DaemonObserver*> observer_{nullptr};
  std::mutex live_mu_;  // live_by_vm_ (leaf lock: taken from engine callbacks)
  std::map<uint32_t, std::shared_ptr<Live>> live_by_vm_;
  bool stopped_ = false;
  bool started_ = false;
};

}  // namespace iceblk::daemon
