#include "daemon/daemon.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <filesystem>

#include "base/log.h"
#include "base/log_context.h"

namespace iceblk::daemon {

namespace {

// Flush an image's writes to stable storage through a throw-away queue.
Status flush_backend(backend::BlockBackend& b) {
  if (b.read_only()) return {};
  ICEBLK_ASSIGN_OR_RETURN(auto q, b.make_queue(1));
  Status result;
  backend::IoRequest req;
  req.op = backend::IoOp::kFlush;
  req.done = [&result](Result<uint64_t> r) {
    if (!r) result = tl::unexpected(r.error());
  };
  q->submit(std::move(req));
  q->flush_submissions();
  q->drain();
  return result;
}

// Removes the images create() made unless it succeeded: a failed start leaves no
// new files behind (an existing image is never removed).
class CreatedImages {
 public:
  CreatedImages() = default;
  CreatedImages(const CreatedImages&) = delete;
  CreatedImages& operator=(const CreatedImages&) = delete;
  ~CreatedImages() {
    for (const auto& p : paths_) ::unlink(p.c_str());
  }
  void add(std::string path) { paths_.push_back(std::move(path)); }
  void keep() { paths_.clear(); }

 private:
  std::vector<std::string> paths_;
};

}  // namespace

Result<std::unique_ptr<Daemon::Export>> Daemon::make_export(const ExportConfig& ec, std::vector<std::string>& created,
                                                             std::vector<secure_world::VmChannel>* channels,
                                                             std::vector<ice::Capability>* sw_caps) {
  auto ex = std::make_unique<Export>();
  ex->cfg = ec;
  ICEBLK_ASSIGN_OR_RETURN(const backend::ImageSpec spec,
                          backend::parse_image_spec(ec.image).map_error([&](const Error& e) {
                            return make_error(e.code, "export '{}': {}", ec.name, e.message);
                          }));
  if (spec.kind != backend::ImageKind::kFile) {
    // NBD / RBD: unreachable storage fails here, in one line naming the image.
    backend::RemoteOptions ro;
    ro.read_only = ec.read_only;
    ro.size = ec.size;
    ro.on_error = ec.on_storage_error;
    ro.io_timeout = std::chrono::seconds(ec.io_timeout_s);
    auto be = backend::open_remote_backend(spec, ro);
    if (!be) return fail(be.error().code, "export '{}': {}", ec.name, be.error().message);
    ex->backend = std::move(*be);
  } else {
    // `size` creates a missing image; an existing one is used as it is (it must be
    // at least `size` bytes, and only the first `size` bytes are exported).
    struct stat st {};
    const bool exists = ::stat(ec.image.c_str(), &st) == 0;
    if (!exists && errno == ENOENT) {
      if (ec.size == 0) {
        return fail(Errc::kNotFound,
                    "export '{}': image {} does not exist (give a size, --size or \"size\", to "
                    "create it)",
                    ec.name, ec.image);
      }
      const std::filesystem::path parent = std::filesystem::path(ec.image).parent_path();
      std::error_code fs_err;
      if (!parent.empty() && !std::filesystem::is_directory(parent, fs_err)) {
        return fail(Errc::kNotFound,
                    "export '{}': cannot create image {}: directory {} does not exist", ec.name,
                    ec.image, parent.string());
      }
      if (ec.read_only) {
        return fail(Errc::kNotFound,
                    "export '{}': image {} does not exist (a read-only export does not create it)",
                    ec.name, ec.image);
      }
    }
    backend::FileOptions fo;
    fo.path = ec.image;
    fo.read_only = ec.read_only;
    fo.create = !exists && ec.size != 0;
    fo.size = ec.size;
    fo.engine = ec.io_engine;
    auto be = backend::open_file_backend(fo);
    if (!be) return fail(be.error().code, "export '{}': {}", ec.name, be.error().message);
    if (fo.create) created.push_back(ec.image);
    ex->backend = std::move(*be);
  }

  blk::BlkDeviceConfig bc;
  bc.num_queues = ec.num_queues;
  bc.queue_size = ec.queue_size;
  bc.read_only = ec.read_only;
  bc.serial = ec.serial;
  bc.max_buffer_memory = ec.max_buffer_memory;  // bounded memory (blk/buffer_pool.h)
  bc.buffer_budget = buffer_budget_;
  bc.test_hold = ec.test_hold;
  if (ec.test_hold.enabled()) {
    spdlog::warn(
        "export {}: TESTING ONLY: every {} completion(s) one is held back (release after {} more, "
        "{} ms): "
        "requests complete out of order",
        ec.name, ec.test_hold.every, ec.test_hold.release_after, ec.test_hold.max_ms);
  }
  // Unregisters the VM unless the export is complete.
  struct VmGuard {
    ice::Engine* engine = nullptr;
    VmId vm{0};
    ~VmGuard() {
      if (engine) engine->remove_vm(vm);
    }
  } guard;
  if (ec.ice) {
    auto vm = engine_->add_vm(ec.name, {ec.slot_offset, ec.max_slots});
    if (!vm) return fail(vm.error().code, "export '{}': {}", ec.name, vm.error().message);
    guard.engine = engine_.get();  // (assigning a VmGuard temporary would unregister it)
    guard.vm = *vm;
    ex->vm = *vm;
    bc.engine = engine_;
    bc.crypt_pool = crypt_pool_;
    bc.vm = *vm;
    bc.key_mode = ec.keys;
    if (!ec.algorithms.empty()) bc.capabilities = ice::capabilities_for(ec.algorithms, cfg_.allow_ecb);
  }
  auto dev = blk::BlkDevice::create(std::move(bc), ex->backend);
  if (!dev) return fail(dev.error().code, "export '{}': {}", ec.name, dev.error().message);
  if (ec.ice && ec.keys == blk::KeyMode::kOutOfBand && channels != nullptr && sw_caps != nullptr) {
    channels->push_back({ec.name, ex->vm, ec.secure_world_socket});
    for (const auto& c : (*dev)->capabilities()) {
      if (std::find(sw_caps->begin(), sw_caps->end(), c) == sw_caps->end()) sw_caps->push_back(c);
    }
  } else if (ec.ice && ec.keys == blk::KeyMode::kOutOfBand) {
    // Added at runtime: its own key channel service, bound now (binding errors,
    // e.g. a channel path in use, refuse the export).
    secure_world::SecureWorldOptions so;
    so.capabilities = (*dev)->capabilities();
    auto sw = secure_world::SecureWorld::create(*engine_, {{ec.name, ex->vm, ec.secure_world_socket}}, std::move(so));
    if (!sw) return fail(sw.error().code, "export '{}': secure world: {}", ec.name, sw.error().message);
    if (auto started = (*sw)->start(); !started) {
      return fail(started.error().code, "export '{}': secure world: {}", ec.name, started.error().message);
    }
    ex->own_secure_world = std::move(*sw);
  }
  ex->blk = std::shared_ptr<blk::BlkDevice>(std::move(*dev));
  ex->device = std::make_unique<VhostBlkDevice>(ex->blk, ec.allow_unsealed_memory);
  ex->device->set_poll_us(ec.poll_us.value_or(cfg_.poll_us));
  // A socket handed in (systemd socket activation, or --socket fd:N) is served
  // as it is; otherwise bind ec.socket.
  auto server = ec.listen_fd >= 0 ? vhost_user::Server::adopt(UniqueFd(ec.listen_fd), ec.socket, *ex->device)
                                  : vhost_user::Server::create(ec.socket, *ex->device);
  if (!server) return fail(server.error().code, "export '{}': {}", ec.name, server.error().message);
  ex->server = std::move(*server);
  {
    std::shared_ptr<Live> live = ex->live;
    std::string name = ec.name;
    ex->server->set_connection_observer([this, live, name](bool connected, const std::string& error) {
      live->connected.store(connected);
      if (DaemonObserver* o = observer_.load()) {
        if (connected) {
          o->export_connected(name);
        } else {
          if (!error.empty()) o->peer_refused("vhost-user", name, error);
          o->export_disconnected(name);
        }
      }
    });
  }
  if (ec.ice) {
    std::lock_guard lk(live_mu_);
    live_by_vm_[ex->vm.value] = ex->live;
  }
  guard.engine = nullptr;  // complete: the VM stays registered
  spdlog::info("export '{}': {} on {} ({} bytes, {} queue(s), ICE {}{})", ec.name, ex->backend->describe(),
               ec.socket, ex->backend->size_bytes(), ec.num_queues, ec.ice ? "on" : "off",
               !ec.ice ? ""
               : ec.keys == blk::KeyMode::kInBand
                   ? fmt::format(", in-band keys, slots [{}, {})", ec.slot_offset, ec.slot_offset + ec.max_slots)
                   : fmt::format(", secure-world keys on {}, slots [{}, {})", ec.secure_world_socket,
                                 ec.slot_offset, ec.slot_offset + ec.max_slots));
  return ex;
}

// When an export closes: what its engine did, from the queue counters and the slot
// observer (tests/e2e/run_fscrypt_e2e.sh reads this line; docs/guest.md).
void Daemon::log_ice_counters(const Export& ex) {
  if (!ex.cfg.ice) return;
  uint64_t enc = 0, dec = 0;
  for (uint16_t q = 0; q < ex.cfg.num_queues; ++q) {
    const blk::QueueStats& st = ex.blk->queue_stats(q);
    enc += st.requests_encrypted.load(std::memory_order_relaxed);
    dec += st.requests_decrypted.load(std::memory_order_relaxed);
  }
  spdlog::info("export '{}': ICE counters: requests encrypted {}, decrypted {}; keys programmed {}, evicted {}",
               ex.cfg.name, enc, dec, ex.live->keys_programmed.load(), ex.live->keys_evicted.load());
}

void Daemon::on_slot(const ice::SlotEvent& ev) {
  {
    std::lock_guard lk(live_mu_);
    auto it = live_by_vm_.find(ev.vm.value);
    if (it != live_by_vm_.end()) {
      (ev.programmed ? it->second->keys_programmed : it->second->keys_evicted).fetch_add(1);
    }
  }
  if (DaemonObserver* o = observer_.load()) o->keyslot_changed(ev.slot.value, std::string(ev.vm_name), ev.programmed);
}

Result<std::unique_ptr<Daemon>> Daemon::create(DaemonConfig cfg) {
  CreatedImages created;  // declared first: unlinked after the daemon closed them
  ICEBLK_TRY(validate(cfg));
  std::unique_ptr<Daemon> d(new Daemon(std::move(cfg)));
  ICEBLK_ASSIGN_OR_RETURN(auto engine, ice::Engine::create({d->cfg_.num_slots, d->cfg_.allow_ecb}));
  d->engine_ = std::move(engine);
  d->buffer_budget_ = std::make_shared<blk::BufferBudget>(d->cfg_.engine_buffer_memory);
  if (d->cfg_.crypt_threads > 0) {
    // Started here, before main() confines the process: the threads exist when the
    // seccomp filter is loaded (TSYNC) and need only futex afterwards.
    ICEBLK_ASSIGN_OR_RETURN(auto pool, ice::CryptPool::create({d->cfg_.crypt_threads}));
    d->crypt_pool_ = std::move(pool);
    spdlog::info("iceblkd: {} crypto thread(s) for encrypted chunks of {} KiB and more",
                 d->cfg_.crypt_threads, ice::kParallelCryptMinBytes / 1024);
  }
  Daemon* self = d.get();
  d->engine_->set_slot_observer([self](const ice::SlotEvent& ev) { self->on_slot(ev); });

  std::vector<secure_world::VmChannel> channels;
  std::vector<ice::Capability> sw_caps;
  for (const ExportConfig& ec : d->cfg_.exports) {
    log::ScopedExport log_scope(ec.name);
    std::vector<std::string> made;
    auto ex = d->make_export(ec, made, &channels, &sw_caps);
    for (auto& p : made) created.add(std::move(p));
    if (!ex) return tl::unexpected(std::move(ex).error());
    d->exports_.push_back(std::move(*ex));
  }
  if (!channels.empty()) {
    secure_world::SecureWorldOptions so;
    so.capabilities = std::move(sw_caps);
    auto sw = secure_world::SecureWorld::create(*d->engine_, std::move(channels), std::move(so));
    if (!sw) return fail(sw.error().code, "secure world: {}", sw.error().message);
    d->secure_world_ = std::move(*sw);
  }
  created.keep();
  return d;
}

Daemon::~Daemon() { shutdown(); }

Status Daemon::start() {
  std::lock_guard lk(mu_);
  if (stopped_) return fail(Errc::kInvalidArgument, "daemon already shut down");
  if (secure_world_) ICEBLK_TRY(secure_world_->start());
  for (auto& ex : exports_) start_export(*ex);
  started_ = true;
  return {};
}

void Daemon::start_export(Export& ex) {
  Export* e = &ex;
  e->thread = std::thread([e] {
    log::thread_context().export_name = e->cfg.name;  // journal field ICEBLK_EXPORT
    Status st = e->server->run();
    if (!st) spdlog::error("export '{}': server stopped: {}", e->cfg.name, st.error().to_string());
  });
}

Status Daemon::add_export(ExportConfig ec) {
  std::lock_guard lk(mu_);
  if (stopped_) return fail(Errc::kInvalidArgument, "daemon is shutting down");
  // A socket handed in at start-up ("fd:N", systemd) is not for a control client to
  // name: it could point the export at any descriptor of the daemon.
  if (ec.listen_fd >= 0 || ec.socket.rfind("fd:", 0) == 0) {
    return fail(Errc::kInvalidArgument, "export '{}': socket '{}': descriptor sockets are for start-up only; give a "
                "path", ec.name, ec.socket);
  }
  // The same checks as a config file, against every live export.
  DaemonConfig all;
  all.num_slots = cfg_.num_slots;
  all.allow_ecb = cfg_.allow_ecb;
  for (const auto& ex : exports_) all.exports.push_back(ex->cfg);
  if (ec.name.empty()) ec.name = fmt::format("export{}", all.exports.size());
  all.exports.push_back(std::move(ec));
  ICEBLK_TRY(validate(all));
  ExportConfig cfg = all.exports.back();
  CreatedImages created;
  std::vector<std::string> made;
  auto ex = make_export(cfg, made, nullptr, nullptr);
  for (auto& p : made) created.add(std::move(p));
  if (!ex) return tl::unexpected(std::move(ex).error());
  created.keep();
  if (started_) start_export(**ex);
  cfg_.exports.push_back(cfg);
  exports_.push_back(std::move(*ex));
  return {};
}

Status Daemon::remove_export(const std::string& name) {
  std::unique_ptr<Export> ex;
  std::lock_guard lk(mu_);  // held throughout: a concurrent add sees the range free only once it is
  {
    if (stopped_) return fail(Errc::kInvalidArgument, "daemon is shutting down");
    auto it = std::find_if(exports_.begin(), exports_.end(), [&](const auto& e) { return e->cfg.name == name; });
    if (it == exports_.end()) return fail(Errc::kNotFound, "no export named '{}'", name);
    if ((*it)->cfg.ice && (*it)->cfg.keys == blk::KeyMode::kOutOfBand && !(*it)->own_secure_world) {
      return fail(Errc::kUnsupported,
                  "export '{}' uses secure-world keys declared at start-up: their shared key service cannot drop "
                  "one channel, so it cannot be removed at runtime (exports added with add-export can)",
                  name);
    }
    ex = std::move(*it);
    exports_.erase(it);
    cfg_.exports.erase(std::find_if(cfg_.exports.begin(), cfg_.exports.end(),
                                    [&](const ExportConfig& c) { return c.name == name; }));
    // Stop accepting and end the connection: in-flight requests complete, the
    // device resets (in-band keys evicted). run() returns and removes the socket.
    ex->server->shutdown();
    if (ex->thread.joinable()) ex->thread.join();
    ex->server.reset();  // removes the socket file if run() never ran
  }
  if (Status st = flush_backend(*ex->backend); !st) {
    spdlog::error("export '{}': final flush failed: {}", name, st.error().to_string());
  }
  if (ex->own_secure_world) ex->own_secure_world->stop();  // closes its channel, removes the socket
  if (ex->cfg.ice) {
    log_ice_counters(*ex);
    engine_->remove_vm(ex->vm);  // evicts and zeroises every slot of the range
    std::lock_guard lk2(live_mu_);
    live_by_vm_.erase(ex->vm.value);
  }
  spdlog::info("export '{}': removed", name);
  return {};
}

std::vector<ExportView> Daemon::exports_view() {
  std::lock_guard lk(mu_);
  std::vector<ExportView> out;
  out.reserve(exports_.size());
  for (const auto& ex : exports_) {
    ExportView v;
    v.cfg = ex->cfg;
    v.vm = ex->vm;
    v.connected = ex->live->connected.load();
    v.connections = ex->server ? ex->server->connections_accepted() : 0;
    v.keys_programmed = ex->live->keys_programmed.load();
    v.keys_evicted = ex->live->keys_evicted.load();
    v.device = ex->blk;
    out.push_back(std::move(v));
  }
  return out;
}

void Daemon::shutdown() {
  std::lock_guard lk(mu_);
  if (stopped_) return;
  stopped_ = true;
  // Stop every server first: each ends its connection, which drains in-flight
  // requests (acknowledged writes are on the image) and resets the device.
  for (auto& ex : exports_) ex->server->shutdown();
  for (auto& ex : exports_) {
    if (ex->thread.joinable()) ex->thread.join();
    ex->server.reset();  // removes the socket file
    log_ice_counters(*ex);
    if (Status st = flush_backend(*ex->backend); !st) {
      spdlog::error("export '{}': final flush failed: {}", ex->cfg.name, st.error().to_string());
    }
  }
  if (secure_world_) secure_world_->stop();
  for (auto& ex : exports_) {
    if (ex->own_secure_world) ex->own_secure_world->stop();
  }
  if (crypt_pool_) crypt_pool_->stop();  // every queue worker has stopped
  if (!engine_) return;  // create() failed before the engine existed
  // Zeroise every key still in the engine (out-of-band keys included).
  for (const auto& ex : exports_) {
    if (ex->cfg.ice) engine_->remove_vm(ex->vm);
  }
  engine_->evict_range({0, engine_->num_slots()});
  if (started_) spdlog::info("iceblkd: shut down cleanly");
}

}  // namespace iceblk::daemon
