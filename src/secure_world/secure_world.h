// The out-of-band key service of spec §7 (the "secure world"): the path
// guest driver → secure monitor call → secure world → ICE key registers, modelled as
// one unix stream socket per VM served by one event-loop thread.
//
// Isolation (the reviewer's question in the seed thread, spec §7):
//   - the caller is identified by the channel (listening socket) its connection was
//     accepted on, never by anything in a message;
//   - every slot named in a request is checked against that VM's physical range
//     [slot_offset, slot_offset + max_slots), read from the engine on every request,
//     before the engine is touched; a slot outside it gets DENIED;
//   - key blobs are validated with the same rules as in-band PROGRAM_KEY (ice/key_blob.h).
//
// Keys programmed here belong to the secure world: nothing in this module evicts
// them on a virtio device reset (spec §8). Stopping the service does not evict them
// either; remove the VM from the engine for that.
//
// Every operation (including rejected and malformed ones) is audited: VM name, op,
// slot, result. Records go to a dedicated spdlog logger ("secure_world.audit", rate-
// limited per VM) and to a bounded in-memory list. Key bytes never appear in either.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include "base/result.h"
#include "base/strong_types.h"
#include "ice/crypto_mode.h"
#include "ice/engine.h"
#include "secure_world/wire.h"

namespace iceblk::secure_world {

// One VM's channel. The VM must already be registered with the engine (add_vm).
struct VmChannel {
  std::string name;         // shown in the audit log
  VmId vm;                  // engine id; its range comes from Engine::vm_range
  std::string socket_path;  // listening socket created by start(), removed by stop()
};

struct AuditRecord {
  std::chrono::system_clock::time_point time;
  std::string vm_name;
  uint16_t op = 0;               // raw op of the request (may be unknown; 0 if no header)
  std::optional<uint32_t> slot;  // physical slot, when the request carried one
  WireStatus status = WireStatus::kOk;
  std::string detail;            // reason for a failure; never key bytes
};

// "vm=<name> op=<OP> slot=<n|-> result=<STATUS>[ detail=...]": the audit log line.
std::string format_audit_record(const AuditRecord& r);

struct SecureWorldOptions {
  // The (alg, data unit size, key size) triples SET_KEY accepts: the same list the
  // device advertises (GET_CRYPTO_CAPABILITIES). Must not be empty.
  std::vector<ice::Capability> capabilities;
  size_t max_connections_per_vm = 16;  // further connections are closed at once
  size_t audit_capacity = 4096;        // in-memory records kept (oldest dropped first)
  unsigned audit_log_per_second = 100; // per VM; excess lines are counted, then summarised
  uint32_t socket_mode = 0600;         // chmod of each socket file after bind
  // Extra sinks for the audit logger (e.g. a file, or an ostream sink in tests), in
  // addition to the sinks of spdlog's default logger.
  std::vector<spdlog::sink_ptr> audit_sinks;
};

class SecureWorld {
 public:
  // Checks: capabilities non-empty; every VmId known to the engine and listed once;
  // names non-empty; socket paths non-empty, distinct and short enough for sun_path.
  // `engine` must outlive the service. Nothing is bound until start().
  static Result<std::unique_ptr<SecureWorld>> create(ice::Engine& engine,
                                                     std::vector<VmChannel> vms,
                                                     SecureWorldOptions opts);
  ~SecureWorld();  // stop()
  SecureWorld(const SecureWorld&) = delete;
  SecureWorld& operator=(const SecureWorld&) = delete;

  // Binds and listens on every channel (a stale socket file nobody listens on is
  // replaced; a live one is kBusy), then starts the event-loop thread. On error
  // nothing is left bound. kBusy if already running.
  Status start();
  // Closes every connection and listener, removes the socket files, joins the
  // thread. Idempotent. Programmed keys stay in the engine.
  void stop();
  [[nodiscard]] bool running() const;

  // Snapshot of the in-memory audit records, oldest first. Thread-safe.
  [[nodiscard]] std::vector<AuditRecord> audit_log() const;
  [[nodiscard]] std::shared_ptr<spdlog::logger> audit_logger() const;

 private:
  struct Impl;
  explicit SecureWorld(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace iceblk::secure_world
