// iceblkd configuration: one engine (the SoC's ICE) shared by several exports (one
// vhost-user socket + image + physical slot range each, i.e. one VM each). Built
// from the command line for a single export, or from a JSON file for several.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend/block_backend.h"
#include "backend/image_spec.h"
#include "base/result.h"
#include "blk/device.h"
#include "ice/crypto_mode.h"

namespace iceblk::daemon {

struct ExportConfig {
  std::string name;                 // shown in logs and the secure world's audit log
  std::string socket;               // vhost-user socket path, or "fd:N" (a listening socket handed in)
  int listen_fd = -1;               // >= 0: serve this listening socket (fd:N, or systemd's) instead of binding
  std::string image;                // image file (or block device)
  uint64_t size = 0;                // bytes; create the image with this size if missing
  bool read_only = false;
  bool allow_unsealed_memory = false;  // accept guest memory not sealed F_SEAL_SHRINK (trusted VMMs only)
  uint16_t num_queues = 1;
  uint16_t queue_size = 256;
  bool ice = true;                  // offer VIRTIO_BLK_F_ICE
  blk::KeyMode keys = blk::KeyMode::kInBand;
  uint32_t slot_offset = 0;         // physical range [slot_offset, slot_offset + max_slots)
  uint32_t max_slots = 32;
  // (algorithm, key size) families offered, every data unit size 512..65536.
  // Empty: AES-128-XTS, AES-256-XTS and AES-128-CBC-ESSIV.
  std::vector<std::pair<ice::Algorithm, ice::KeySize>> algorithms;
  std::string secure_world_socket;  // out-of-band mode: this VM's key channel (default <socket>.sw)
  backend::FileEngine io_engine = backend::FileEngine::kAuto;
  std::string serial;               // GET_ID (default: the export name, cut to 20 bytes)
  // Bounded memory (blk/buffer_pool.h): bounce buffers of this export's encrypted
  // I/O, split over its queues (--max-buffer-memory, "max_buffer_memory").
  uint64_t max_buffer_memory = blk::kDefaultExportBufferMemory;
  // TESTING ONLY: completions held back so that requests complete out of order
  // (--test-reorder-completions, "test_hold"; blk/completion_hold.h).
  blk::CompletionHoldConfig test_hold;
  // Queue workers spin on the ring this long before sleeping (JSON poll_us); unset:
  // DaemonConfig::poll_us.
  std::optional<uint32_t> poll_us;
  // Remote images (nbd://, nbd+unix://, rbd:; docs/iceblkd.md "Remote images"):
  // what happens when the storage stops answering, and after how long.
  backend::StorageErrorPolicy on_storage_error = backend::StorageErrorPolicy::kRetry;
  uint32_t io_timeout_s = 30;  // --io-timeout / "io_timeout", seconds (1..3600)
};

struct DaemonConfig {
  uint32_t num_slots = 64;  // physical keyslots of the shared engine
  bool allow_ecb = false;   // AES-ECB leaks equal blocks: opt-in only
  std::vector<ExportConfig> exports;
  std::string control_socket;  // QMP control socket (--control, "control"); empty: none
  // Bounded memory: bounce buffers of all exports together (--engine-buffer-memory,
  // engine "buffer_memory").
  uint64_t engine_buffer_memory = blk::kDefaultEngineBufferMemory;
  // Crypto threads shared by every export (ice/crypt_pool.h; --crypto-threads, engine
  // "crypt_threads"): 0..ice::kMaxCryptThreads, 0 = each queue worker crypts alone.
  uint32_t crypt_threads = 0;
  // Confinement after start-up (daemon/sandbox.h, docs/iceblkd.md "Confinement").
  bool sandbox = true;            // no_new_privs + seccomp allowlist (--no-sandbox, "sandbox")
  bool allow_core_dumps = false;  // stay dumpable (--allow-core-dumps, "allow_core_dumps")
  std::string user;               // drop to this user once started (--user, "user"); empty: stay
  std::string group;              // ... and group (--group, "group"); default: the user's group
  uint32_t poll_us = 0;  // --poll-us, JSON top-level poll_us: default of every export; 0 = off
};

// Largest --poll-us / poll_us accepted (a spinning worker holds a core meanwhile).
inline constexpr uint32_t kMaxPollUs = 1'000'000;

// An image size: iceblk::parse_size (base/parse_size.h) that also refuses 0 and
// values that are not a multiple of 512 bytes, with a message naming `what`.
Result<uint64_t> parse_image_size(std::string_view text, std::string_view what);

// "fd:N" (a listening socket inherited as file descriptor N, QEMU's addr.type=fd) -> N.
Result<int> parse_fd_socket(std::string_view text);

// "retry" or "fail" (--on-storage-error, "on_storage_error").
Result<backend::StorageErrorPolicy> parse_storage_error_policy(std::string_view text);

// Comma-separated algorithm names ("aes-256-xts,aes-128-cbc-essiv").
Result<std::vector<std::pair<ice::Algorithm, ice::KeySize>>> parse_algorithm_list(std::string_view text);

// Parse the JSON config file (format in docs/iceblkd.md). Errors name the file and field;
// every refusal is kInvalidArgument (validate() adds kOutOfRange for slot ranges).
Result<DaemonConfig> load_config_file(const std::string& path);
// The same, from the file's text (`path` only names it in errors; the fuzz target).
Result<DaemonConfig> parse_config_text(std::string_view text, const std::string& path);

// One export from its JSON text (the config file's export object; add-export's
// arguments). Unknown fields and wrong types are refused, naming `where` and the field.
Result<ExportConfig> parse_export_json(std::string_view json_text, const std::string& where);

// Cross-field checks: names/sockets unique, queue counts and sizes, slot ranges inside
// the engine and not overlapping (the error names both exports), ECB only if allowed.
Status validate(DaemonConfig& cfg);

}  // namespace iceblk::daemon
