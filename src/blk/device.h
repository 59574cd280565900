// The virtio-blk + ICE device core, independent of the transport: features, config
// space, reset, and the per-queue processors (queue_processor.h). The vhost-user
// layer drives it; tests drive it through an in-process ring.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/block_backend.h"
#include "base/result.h"
#include "base/strong_types.h"
#include "blk/buffer_pool.h"
#include "blk/completion_hold.h"
#include "blk/request.h"
#include "blk/stats.h"
#include "blk/wire.h"
#include "ice/crypt_pool.h"
#include "ice/crypto_mode.h"
#include "ice/engine.h"
#include "iceblk/key_mode.h"

namespace iceblk::blk {

class QueueProcessor;

// How keys reach the engine (spec §6 / §7), iceblk/key_mode.h: kInBand offers bit 23
// (PROGRAM_KEY / EVICT_KEY through the virtqueue); otherwise the keys come from the
// secure world and the device has no key path.
using iceblk::KeyMode;

struct BlkDeviceConfig {
  uint16_t num_queues = 1;      // 1..(kMaxQueues); > 1 offers VIRTIO_BLK_F_MQ
  uint16_t queue_size = 256;    // power of two; seg_max = queue_size - 2
  bool read_only = false;       // also forced by a read-only backend
  bool writeback = true;        // initial cache mode (config `writeback`)
  std::string serial;           // GET_ID, at most 20 bytes
  // Topology (VIRTIO_BLK_F_TOPOLOGY); blk_size is always 512.
  uint8_t physical_block_exp = 0;  // physical block = 512 << exp
  uint16_t min_io_size = 1;        // in logical blocks
  uint32_t opt_io_size = 0;        // in logical blocks
  // DISCARD / WRITE_ZEROES limits (offered only if the backend supports discard).
  uint32_t max_discard_sectors = 1u << 21;  // 1 GiB
  uint32_t max_discard_seg = 32;
  uint32_t discard_sector_alignment = 8;    // 4 KiB
  uint32_t max_write_zeroes_sectors = 1u << 21;
  uint32_t max_write_zeroes_seg = 32;

  // ICE: enabled when `engine` is set. `vm` must be registered in the engine
  // (Engine::add_vm); its range gives slot_offset / max_slots (spec §2).
  std::shared_ptr<ice::Engine> engine;
  VmId vm{0};
  KeyMode key_mode = KeyMode::kInBand;
  // Advertised capabilities (spec §4.1). Empty = AES-128/256-XTS and
  // AES-128-CBC-ESSIV at every data unit size (+ ECB if the engine allows it).
  std::vector<ice::Capability> capabilities;
  // Crypto threads (ice/crypt_pool.h, iceblkd --crypto-threads): when set, large
  // encrypted chunks are split across the pool, shared by every queue and export of
  // the engine. Null: every queue worker crypts alone (--crypto-threads 0).
  std::shared_ptr<ice::CryptPool> crypt_pool;

  // Bounce-buffer memory of encrypted I/O (blk/buffer_pool.h): at most this many
  // bytes for the export, split evenly over its queues (each needs at least
  // kMinQueueBufferMemory); and, when set, the engine-wide budget every queue
  // reserves its share from (shared by all exports of one engine).
  uint64_t max_buffer_memory = kDefaultExportBufferMemory;
  std::shared_ptr<BufferBudget> buffer_budget;
  // TESTING ONLY: hold chosen completions back so that requests complete out of
  // order (blk/completion_hold.h; iceblkd --test-reorder-completions).
  CompletionHoldConfig test_hold;
};

inline constexpr uint16_t kMaxQueues = 64;

class BlkDevice {
 public:
  // Validates the config (queue count/size, serial length, ICE range) against the
  // backend. Errors name the offending field.
  static Result<std::unique_ptr<BlkDevice>> create(BlkDeviceConfig cfg,
                                                   std::shared_ptr<backend::BlockBackend> backend);
  ~BlkDevice();

  // VERSION_1, INDIRECT_DESC, EVENT_IDX, SEG_MAX, BLK_SIZE, TOPOLOGY, FLUSH,
  // CONFIG_WCE, MQ (> 1 queue), DISCARD + WRITE_ZEROES (backend supports discard),
  // RO (read-only), ICE (engine set) and ICE_INBAND_KEYS (engine set, in-band mode).
  [[nodiscard]] uint64_t offered_features() const { return offered_; }

  // Accept the driver's features. kInvalidArgument for bits not offered (bit 30,
  // VHOST_USER_F_PROTOCOL_FEATURES, is the transport's and is ignored) or bit 23
  // without bit 22. Decides the header size (16 or 32 bytes). Call before creating
  // queue processors; processors created earlier keep the old features.
  Status set_features(uint64_t negotiated);
  [[nodiscard]] uint64_t negotiated_features() const { return negotiated_.load(std::memory_order_acquire); }
  [[nodiscard]] uint32_t header_size() const;

  // Config space (spec §2): any sub-range of the 104 bytes; a range reaching beyond
  // them is kOutOfRange (the vhost-user layer answers it with size 0).
  Status read_config(uint32_t offset, std::span<uint8_t> out) const;
  // Only `writeback` (offset 32, 1 byte, value 0/1, needs CONFIG_WCE negotiated) is
  // writable; anything else is kPermissionDenied / kInvalidArgument.
  Status write_config(uint32_t offset, std::span<const uint8_t> data);
  // The full 104-byte config space.
  [[nodiscard]] std::array<uint8_t, kConfigSize> config_bytes() const;

  // Device reset (spec §8): forget negotiated features, restore the initial cache
  // mode, and (in-band mode) evict and zeroise this VM's keys and change
  // key_generation. Out-of-band keys belong to the secure world and survive. Stop the
  // queue workers first.
  void reset();

  // Config key_generation (spec §2, proposed addition): a random value when the
  // device is created (a restarted daemon cannot know its predecessor's, and its
  // slots are empty), changed whenever this VM's keys are lost (in-band reset). A
  // driver that sees a value other than the one it programmed under reprograms.
  [[nodiscard]] uint32_t key_generation() const {
    return key_generation_.load(std::memory_order_acquire);
  }

  // One processor per queue, owned by that queue's worker thread.
  Result<std::unique_ptr<QueueProcessor>> make_queue_processor(uint16_t queue_index);

  // Current cache mode: true = writeback (FLUSH makes writes stable), false =
  // writethrough (every write is flushed before it completes).
  [[nodiscard]] bool writeback() const;

  [[nodiscard]] const BlkDeviceConfig& config() const { return cfg_; }
  [[nodiscard]] uint64_t capacity_sectors() const { return capacity_; }
  [[nodiscard]] bool read_only() const { return read_only_; }
  [[nodiscard]] ice::SlotRange slot_range() const { return range_; }
  [[nodiscard]] const std::vector<ice::Capability>& capabilities() const { return caps_; }
  [[nodiscard]] backend::BlockBackend& backend() { return *backend_; }
  // Counters of queue q (< num_queues), kept across reconnects (control socket).
  [[nodiscard]] QueueStats& queue_stats(uint16_t q) { return stats_[q]; }
  [[nodiscard]] const QueueStats& queue_stats(uint16_t q) const { return stats_[q]; }
  // What the parser needs for the current negotiated features.
  [[nodiscard]] ParseEnv parse_env() const;

 private:
  BlkDevice(BlkDeviceConfig cfg, std::shared_ptr<backend::BlockBackend> backend);

  BlkDeviceConfig cfg_;
  std::shared_ptr<backend::BlockBackend> backend_;
  uint64_t capacity_ = 0;
  bool read_only_ = false;
  bool discard_ = false;
  ice::SlotRange range_;
  std::vector<ice::Capability> caps_;
  uint64_t offered_ = 0;
  std::atomic<uint64_t> negotiated_{0};  // read by queue workers (writeback())
  std::atomic<bool> writeback_{true};
  std::atomic<uint32_t> key_generation_{0};
  std::unique_ptr<QueueStats[]> stats_;  // one per queue
};

}  // namespace iceblk::blk
