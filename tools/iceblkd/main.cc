// iceblkd: the vhost-user-blk device daemon with the Inline Crypto Engine.
//
//   iceblkd --socket /tmp/vm0.sock --image disk.img
// serves disk.img as a writable virtio-blk device with ICE offered (in-band keys,
// AES-XTS and ESSIV) until SIGINT/SIGTERM. `--config FILE` declares several exports
// sharing one engine (docs/iceblkd.md).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>

#include <spdlog/sinks/stdout_color_sinks.h>

#include "base/log.h"
#include "base/parse_size.h"
#include "base/secret_bytes.h"
#include "base/version.h"
#include "control/qmp_server.h"
#include "daemon/daemon.h"
#include "daemon/journal_sink.h"
#include "daemon/sandbox.h"
#include "daemon/systemd.h"

using namespace iceblk;

namespace {

int die(const std::string& msg) {
  std::fprintf(stderr, "iceblkd: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"iceblkd: vhost-user-blk device with an Inline Crypto Engine (VIRTIO_BLK_F_ICE)"};
  std::string config_file, socket, image, size, keys = "inband", algorithms, log_level = "info", io_engine = "auto";
  std::string sw_socket, serial, name = "vm0", log_target = "auto", control;
  bool readonly = false, no_ice = false, allow_ecb = false, allow_unsealed_memory = false;
  uint16_t num_queues = 1, queue_size = 256;
  uint32_t max_slots = 32, slot_offset = 0, num_slots = 64;
  // Bounded memory (docs/iceblkd.md): per export, and for the whole engine.
  std::string max_buffer_memory, engine_buffer_memory;
  app.add_option("--max-buffer-memory", max_buffer_memory,
                 "bounce-buffer memory of this export's encrypted I/O, split over its queues (default 4M; at "
                 "least 256K per queue)");
  app.add_option("--engine-buffer-memory", engine_buffer_memory,
                 "bounce-buffer memory of all exports together (default 64M)");
  bool no_sandbox = false, allow_core_dumps = false;  // confinement (daemon/sandbox.h)
  std::string run_user, run_group;
  uint32_t poll_us = 0;
  uint32_t crypto_threads = 0;
  app.add_option("--config", config_file, "JSON file declaring several exports sharing one engine");
  app.add_option("--socket", socket,
                 "vhost-user socket path to listen on, or fd:N to serve the listening socket inherited as "
                 "file descriptor N");
  app.add_option("--name", name, "export name, for logs and for FileDescriptorName= matching (default vm0)");
  app.add_option("--image", image,
                 "disk image: a file or block device, nbd://HOST[:PORT]/EXPORT, "
                 "nbd+unix:///EXPORT?socket=PATH, "
                 "or rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER]");
  app.add_option("--size", size, "create the image with this size if missing (e.g. 64M, 1G)");
  app.add_flag("--readonly", readonly, "serve the image read-only (VIRTIO_BLK_F_RO)");
  app.add_flag("--allow-unsealed-memory", allow_unsealed_memory,
               "accept guest memory that is not a memfd sealed with F_SEAL_SHRINK (memory-backend-file, hugetlbfs); "
               "a front-end that then shrinks it loses its own connection (the SIGBUS is contained), other "
               "exports are not disturbed");
  app.add_option("--num-queues", num_queues, "number of virtqueues")->check(CLI::Range(1, 64));
  app.add_option("--queue-size", queue_size, "maximum virtqueue size (power of two)")->check(CLI::Range(4, 1024));
  app.add_flag("--no-ice", no_ice, "plain virtio-blk: do not offer VIRTIO_BLK_F_ICE");
  app.add_option("--max-slots", max_slots, "keyslots this VM may use")->check(CLI::Range(1, 255));
  app.add_option("--slot-offset", slot_offset, "first physical keyslot of this VM")->check(CLI::Range(0, 255));
  app.add_option("--num-slots", num_slots, "physical keyslots of the engine")->check(CLI::Range(1, 256));
  app.add_option("--keys", keys, "key management: inband (bit 23) or secure-world (out of band)")
      ->check(CLI::IsMember({"inband", "secure-world"}));
  app.add_option("--secure-world-socket", sw_socket, "secure-world key channel (default: <socket>.sw)");
  app.add_option("--algorithms", algorithms,
                 "comma-separated: aes-128-xts,aes-256-xts,aes-128-cbc-essiv,aes-128-ecb,aes-256-ecb "
                 "(default: the XTS and ESSIV ones)");
  app.add_flag("--allow-ecb", allow_ecb, "allow AES-ECB (leaks equal blocks)");
  app.add_option("--io-engine", io_engine, "auto, io_uring or sync")->check(CLI::IsMember({"auto", "io_uring", "sync"}));
  app.add_option("--serial", serial, "serial number returned by GET_ID (max 20 bytes)");
  // TESTING ONLY (docs/iceblkd.md): fault injection for the crash/restart tests.
  std::string test_reorder;
  app.add_option("--test-reorder-completions", test_reorder,
                 "TESTING ONLY: hold every EVERY-th completion back until RELEASE_AFTER later ones (or MAX_MS) "
                 "so requests complete out of order: EVERY[:RELEASE_AFTER[:MAX_MS]]");
  app.add_option("--poll-us", poll_us,
                 "queue workers spin on the ring for up to N microseconds before sleeping on the kick (lower "
                 "latency for a core's time; default 0 = off; with --config: the default of every export)")
      ->check(CLI::Range(0u, daemon::kMaxPollUs));
  app.add_option("--crypto-threads", crypto_threads,
                 "threads that take shares of large encrypted requests (64K and up) off the queue "
                 "workers, shared by every export (default 0 = each worker crypts alone; with "
                 "--config: replaces engine crypt_threads)")
      ->check(CLI::Range(0u, ice::kMaxCryptThreads));
  // Remote images (NBD, RBD): behaviour when the storage stops answering.
  std::string on_storage_error = "retry";
  uint32_t io_timeout = 30;
  app.add_option("--on-storage-error", on_storage_error,
                 "remote images: retry (block until the storage is back) or fail (IOERR after "
                 "--io-timeout)")
      ->check(CLI::IsMember({"retry", "fail"}));
  app.add_option("--io-timeout", io_timeout,
                 "remote images: seconds before a request fails (fail), or before stopping a queue "
                 "gives up on "
                 "requests in flight (retry)")
      ->check(CLI::Range(1, 3600));
  app.add_option("--control", control, "QMP control socket (docs/control.md): add/remove exports at runtime");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  app.add_option("--log-target", log_target,
                 "auto (the journal when JOURNAL_STREAM names stderr, else stderr), stderr or journal")
      ->check(CLI::IsMember({"auto", "stderr", "journal"}));
  app.add_flag("--no-sandbox", no_sandbox,
               "debugging only: no seccomp allowlist and no no_new_privs after start-up (docs/iceblkd.md)");
  app.add_flag("--allow-core-dumps", allow_core_dumps,
               "stay dumpable (core dumps, ptrace by the same user); key memory is still left out of dumps");
  app.add_option("--user", run_user, "drop to this user (name or uid) once sockets and images are open");
  app.add_option("--group", run_group, "drop to this group (name or gid; default: the user's primary group)");
  app.set_version_flag("--version", [] { return version::banner("iceblkd"); },
                       "print the version, the git revision and the library versions, and exit");
  // Per-export options describe the single command-line export: refuse them next to
  // --config instead of silently ignoring them.
  CLI::Option* config_opt = app.get_option("--config");
  for (const char* opt : {"--socket", "--name", "--image", "--size", "--readonly", "--num-queues", "--queue-size",
                          "--no-ice", "--max-slots", "--slot-offset", "--num-slots", "--keys", "--secure-world-socket",
                          "--algorithms", "--io-engine", "--serial", "--allow-unsealed-memory",
                          "--max-buffer-memory", "--test-reorder-completions", "--on-storage-error",
                          "--io-timeout"}) {
    config_opt->excludes(app.get_option(opt));
  }
  app.get_option("--log-level")->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other start-up error (CLI11 would add a second one).
    return die(e.what());
  }

  // Log lines go to stderr (stdout stays free): "[time] [iceblkd] [level] message";
  // under systemd, to the journal with priorities and structured fields.
  const bool journal = log_target == "journal" || (log_target == "auto" && daemon::stderr_is_journal());
  log::set_default_logger(
      journal ? std::make_shared<spdlog::logger>("iceblkd", daemon::make_journal_sink("iceblkd"))
              : spdlog::stderr_color_mt("iceblkd"));
  log::set_level(log_level);
  // Sockets handed in by systemd socket activation (LISTEN_FDS).
  auto passed = daemon::take_listen_fds();
  if (!passed) return die(passed.error().message);
  daemon::DaemonConfig cfg;
  if (!config_file.empty()) {
    if (!socket.empty() || !image.empty()) return die("use either --config or --socket/--image, not both");
    auto c = daemon::load_config_file(config_file);
    if (!c) return die(c.error().message);
    cfg = std::move(*c);
  } else if (socket.empty() && image.empty() && passed->empty() && !control.empty()) {
    cfg.num_slots = num_slots;  // no export yet: they come over the control socket
  } else {
    if (socket.empty() && passed->empty()) return die("--socket PATH is required (or --config FILE)");
    if (image.empty()) return die("--image FILE is required (or --config FILE)");
    daemon::ExportConfig e;
    e.name = name;
    e.socket = socket;
    e.image = image;
    if (!size.empty()) {
      auto s = daemon::parse_image_size(size, "--size");
      if (!s) return die(s.error().message);
      e.size = *s;
    }
    e.read_only = readonly;
    e.allow_unsealed_memory = allow_unsealed_memory;
    e.num_queues = num_queues;
    e.queue_size = queue_size;
    e.ice = !no_ice;
    e.keys = keys == "inband" ? blk::KeyMode::kInBand : blk::KeyMode::kOutOfBand;
    e.slot_offset = slot_offset;
    e.max_slots = max_slots;
    e.secure_world_socket = sw_socket;
    e.serial = serial;
    if (!test_reorder.empty()) {
      auto h = blk::parse_completion_hold(test_reorder);
      if (!h) return die(h.error().message);
      e.test_hold = *h;
    }
    e.io_engine = io_engine == "sync"       ? backend::FileEngine::kSync
                  : io_engine == "io_uring" ? backend::FileEngine::kIoUring
                                            : backend::FileEngine::kAuto;
    e.on_storage_error = on_storage_error == "fail" ? backend::StorageErrorPolicy::kFail
                                                    : backend::StorageErrorPolicy::kRetry;
    e.io_timeout_s = io_timeout;
    if (!algorithms.empty()) {
      auto a = daemon::parse_algorithm_list(algorithms);
      if (!a) return die(a.error().message);
      e.algorithms = std::move(*a);
    }
    if (!max_buffer_memory.empty()) {
      auto s = parse_size(max_buffer_memory, "--max-buffer-memory");
      if (!s) return die(s.error().message);
      e.max_buffer_memory = *s;
    }
    cfg.exports.push_back(std::move(e));
    cfg.num_slots = num_slots;
  }
  if (!engine_buffer_memory.empty()) {
    auto s = parse_size(engine_buffer_memory, "--engine-buffer-memory");
    if (!s) return die(s.error().message);
    cfg.engine_buffer_memory = *s;
  }
  cfg.allow_ecb = cfg.allow_ecb || allow_ecb;
  if (!control.empty()) cfg.control_socket = control;
  if (app.count("--poll-us") > 0) cfg.poll_us = poll_us;
  if (app.count("--crypto-threads") > 0) cfg.crypt_threads = crypto_threads;
  if (auto st = daemon::assign_listen_fds(cfg, std::move(*passed)); !st) return die(st.error().message);

  // Confinement, before any key can arrive (daemon/sandbox.h, docs/threat-model.md):
  // not dumpable; key material and keyed OpenSSL contexts in the locked, non-dumpable
  // key arena (set up before anything uses OpenSSL).
  cfg.sandbox = cfg.sandbox && !no_sandbox;
  cfg.allow_core_dumps = cfg.allow_core_dumps || allow_core_dumps;
  if (!run_user.empty()) cfg.user = run_user;
  if (!run_group.empty()) cfg.group = run_group;
  if (auto st = daemon::set_dumpable(cfg.allow_core_dumps); !st) return die(st.error().message);
  auto identity = daemon::resolve_identity(cfg.user, cfg.group);
  if (!identity) return die(identity.error().message);
  if (std::getenv("ICEBLK_TESTING_KEYS_IN_DUMPS") != nullptr) {  // the dump test's control run only
    spdlog::warn("iceblkd: ICEBLK_TESTING_KEYS_IN_DUMPS is set: key memory is NOT protected (testing only)");
  } else {
    auto mem = init_secret_memory();
    if (!mem) return die(mem.error().message);
    if (!mem->warning.empty()) spdlog::warn("iceblkd: {}", mem->warning);
  }

  // Block the signals before any thread starts, so only sigwait() below sees them;
  // a front-end closing its socket must not kill us with SIGPIPE.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  auto d = daemon::Daemon::create(std::move(cfg));
  if (!d) return die(d.error().message);
  std::unique_ptr<control::QmpServer> qmp;
  if (!(*d)->config().control_socket.empty()) {
    // "quit" ends the daemon like SIGTERM does: the signal reaches sigwait() below.
    auto q = control::QmpServer::create((*d)->config().control_socket, **d, {}, [] { ::kill(::getpid(), SIGTERM); });
    if (!q) return die(q.error().message);
    qmp = std::move(*q);
  }
  if (auto st = (*d)->start(); !st) return die(st.error().message);
  // Counted before the control socket starts: its add-export/remove-export change the
  // export list on the QMP thread (TSan: num_exports() raced with add_export).
  const size_t serving = (*d)->num_exports();
  if (qmp) {
    if (auto st = qmp->start(); !st) return die(st.error().message);
  }
  // Sockets are bound and images open: drop the identity, then the allowlist on
  // every thread. A failure here stops the daemon (it must not run unconfined).
  if (auto st = daemon::confine(*identity, (*d)->config().sandbox, (*d)->config().allow_core_dumps); !st) {
    (*d)->shutdown();
    return die(st.error().message);
  }
  if (!(*d)->config().sandbox) spdlog::warn("iceblkd: sandbox off (--no-sandbox): for debugging only");
  spdlog::info("iceblkd: serving {} export(s); SIGINT/SIGTERM to stop", serving);
  daemon::notify_ready(fmt::format("serving {} export(s)", serving));  // Type=notify

  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("iceblkd: {} received, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (qmp) qmp->stop();  // no command runs while the exports go away
  daemon::notify_stopping("shutting down");
  (*d)->shutdown();
  return 0;
}
