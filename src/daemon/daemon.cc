#include "daemon/daemon.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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

Result<std::unique_ptr<Daemon>> Daemon::create(DaemonConfig cfg) {
  CreatedImages created;  // declared first: unlinked after the daemon closed them
  ICEBLK_TRY(validate(cfg));
  std::unique_ptr<Daemon> d(new Daemon(std::move(cfg)));
  ICEBLK_ASSIGN_OR_RETURN(auto engine, ice::Engine::create({d->cfg_.num_slots, d->cfg_.allow_ecb}));
  d->engine_ = std::move(engine);

  std::vector<secure_world::VmChannel> channels;
  std::vector<ice::Capability> sw_caps;
  for (const ExportConfig& ec : d->cfg_.exports) {
    log::ScopedExport log_scope(ec.name);
    auto ex = std::make_unique<Export>();
    ex->cfg = ec;
    // `size` creates a missing image; an existing one is used as it is (it must be
    // at least `size` bytes, and only the first `size` bytes are exported).
    struct stat st {};
    const bool exists = ::stat(ec.image.c_str(), &st) == 0;
    if (!exists && errno == ENOENT) {
      if (ec.size == 0) {
        return fail(Errc::kNotFound, "export '{}': image {} does not exist (give a size, --size or \"size\", to "
                    "create it)", ec.name, ec.image);
      }
      const std::filesystem::path parent = std::filesystem::path(ec.image).parent_path();
      std::error_code fs_err;
      if (!parent.empty() && !std::filesystem::is_directory(parent, fs_err)) {
        return fail(Errc::kNotFound, "export '{}': cannot create image {}: directory {} does not exist", ec.name,
                    ec.image, parent.string());
      }
      if (ec.read_only) {
        return fail(Errc::kNotFound, "export '{}': image {} does not exist (a read-only export does not create it)",
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
    if (fo.create) created.add(ec.image);
    ex->backend = std::move(*be);

    blk::BlkDeviceConfig bc;
    bc.num_queues = ec.num_queues;
    bc.queue_size = ec.queue_size;
    bc.read_only = ec.read_only;
    bc.serial = ec.serial;
    if (ec.ice) {
      auto vm = d->engine_->add_vm(ec.name, {ec.slot_offset, ec.max_slots});
      if (!vm) return fail(vm.error().code, "export '{}': {}", ec.name, vm.error().message);
      ex->vm = *vm;
      bc.engine = d->engine_;
      bc.vm = *vm;
      bc.key_mode = ec.keys;
      if (!ec.algorithms.empty()) bc.capabilities = ice::capabilities_for(ec.algorithms, d->cfg_.allow_ecb);
    }
    auto dev = blk::BlkDevice::create(std::move(bc), ex->backend);
    if (!dev) return fail(dev.error().code, "export '{}': {}", ec.name, dev.error().message);
    if (ec.ice && ec.keys == blk::KeyMode::kOutOfBand) {
      channels.push_back({ec.name, ex->vm, ec.secure_world_socket});
      for (const auto& c : (*dev)->capabilities()) {
        if (std::find(sw_caps.begin(), sw_caps.end(), c) == sw_caps.end()) sw_caps.push_back(c);
      }
    }
    ex->device = std::make_unique<VhostBlkDevice>(std::shared_ptr<blk::BlkDevice>(std::move(*dev)));
    // A socket handed in (systemd socket activation, or --socket fd:N) is served
    // as it is; otherwise bind ec.socket.
    auto server = ec.listen_fd >= 0 ? vhost_user::Server::adopt(UniqueFd(ec.listen_fd), ec.socket, *ex->device)
                                    : vhost_user::Server::create(ec.socket, *ex->device);
    if (!server) return fail(server.error().code, "export '{}': {}", ec.name, server.error().message);
    ex->server = std::move(*server);
    spdlog::info("export '{}': {} on {} ({} bytes, {} queue(s), ICE {}{})", ec.name, ex->backend->describe(),
                 ec.socket, ex->backend->size_bytes(), ec.num_queues, ec.ice ? "on" : "off",
                 !ec.ice ? ""
                 : ec.keys == blk::KeyMode::kInBand
                     ? fmt::format(", in-band keys, slots [{}, {})", ec.slot_offset, ec.slot_offset + ec.max_slots)
                     : fmt::format(", secure-world keys on {}, slots [{}, {})", ec.secure_world_socket,
                                   ec.slot_offset, ec.slot_offset + ec.max_slots));
    d->exports_.push_back(std::move(ex));
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
  for (auto& ex : exports_) {
    Export* e = ex.get();
    e->thread = std::thread([e] {
      log::thread_context().export_name = e->cfg.name;  // journal field ICEBLK_EXPORT
      Status st = e->server->run();
      if (!st) spdlog::error("export '{}': server stopped: {}", e->cfg.name, st.error().to_string());
    });
  }
  started_ = true;
  return {};
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
    if (ex->cfg.ice) {
      const auto& c = ex->device->blk().ice_counters();
      spdlog::info("export '{}': ICE counters: requests encrypted {}, decrypted {}; keys programmed {}, evicted {}",
                   ex->cfg.name, c.requests_encrypted.load(), c.requests_decrypted.load(), c.keys_programmed.load(),
                   c.keys_evicted.load());
    }
    if (Status st = flush_backend(*ex->backend); !st) {
      spdlog::error("export '{}': final flush failed: {}", ex->cfg.name, st.error().to_string());
    }
  }
  if (secure_world_) secure_world_->stop();
  if (!engine_) return;  // create() failed before the engine existed
  // Zeroise every key still in the engine (out-of-band keys included).
  for (const auto& ex : exports_) {
    if (ex->cfg.ice) engine_->remove_vm(ex->vm);
  }
  engine_->evict_range({0, engine_->num_slots()});
  if (started_) spdlog::info("iceblkd: shut down cleanly");
}

}  // namespace iceblk::daemon
