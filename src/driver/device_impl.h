// Device::Impl, shared by the files of the driver library:
//   device.cc          the facade (include/iceblk/device.h): accessors, submit, sync wrappers
//   setup.cc           connect, negotiate, config space, rings; reset and reconnect
//   request_builder.cc local checks of an Io and its wire form (blk/wire.h)
//   key_path.cc        keys: in-band PROGRAM/EVICT_KEY or the secure world, named keys
//   queue_runner.cc    one virtqueue: contexts, buffers, the completion thread
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "blk/wire.h"
#include "iceblk/keyslot_manager.h"
#include "driver/queue_runner.h"
#include "driver/secure_world_client.h"
#include "iceblk/device.h"
#include "vhost_user/frontend.h"
#include "virtio/driver_queue.h"

namespace iceblk::driver {

// An Io checked and put in wire form, ready for the ring.
struct BuiltRequest {
  std::vector<uint8_t> header;
  std::vector<uint8_t> segment;  // DISCARD / WRITE_ZEROES: the one segment (out points here)
  std::span<const uint8_t> out;
  std::span<uint8_t> in;
  KeyslotManager::Lease lease;
  std::string what;  // "read 4096 bytes at offset 0 (queue 0, slot 1, dun 2)"
};

struct Device::Impl {
  ConnectOptions opts;
  std::shared_ptr<virtio::DriverMemory> mem;
  std::unique_ptr<BufferPool> pool;  // before `queues`: they use it until destroyed
  std::unique_ptr<vhost_user::Frontend> frontend;
  uint64_t offered = 0;
  uint64_t negotiated = 0;     // without bit 30
  uint64_t wire_features = 0;  // as sent in SET_FEATURES (with bit 30)
  uint64_t protocol = 0;
  uint16_t device_queues = 1;
  uint16_t num_queues = 1;
  uint32_t header_size = blk::kPlainHeaderSize;
  DeviceConfig config;
  std::vector<ice::Capability> capabilities;
  KeyMode key_mode = KeyMode::kNone;
  std::optional<SecureWorldClient> secure_world;
  std::mutex secure_world_mu;
  std::unique_ptr<KeyslotManager> keyslots;
  uint32_t keys_generation = 0;  // config key_generation when the keys were (re)programmed
  std::vector<std::unique_ptr<QueueRunner>> queues;

  [[nodiscard]] bool has(unsigned bit) const { return blk::has_feature(negotiated, bit); }
  [[nodiscard]] bool on_completion_thread() const;

  // setup.cc
  Status connect_and_negotiate();  // socket, features, memory table, config space
  Status share_memory();
  Status read_config_space();
  Status choose_queue_count();
  Status start_queues();
  void stop_queues();
  // Whether the device lost the keys programmed into it (key_generation, or spec §8).
  [[nodiscard]] bool keys_lost() const;
  Status restore_keys();  // after reset/reconnect: in-band keys were evicted (spec §8)

  // request_builder.cc
  Result<BuiltRequest> build(const Io& io);
  Status check(const Io& io, uint64_t len, const std::string& what) const;

  // key_path.cc
  Status setup_keys();  // key mode, capabilities, secure world, keyslot manager
  Status program_slot(uint8_t wire_slot, const ice::Key& key, uint16_t q);
  Status evict_slot(uint8_t wire_slot, uint16_t q);

  // device.cc
  Status submit_ring(uint16_t q, RingRequest r);
  // Submits and waits up to opts.request_timeout; maps the status byte
  // (status_to_error) naming `what`; kTimedOut names `what` and the queue.
  Status sync(uint16_t q, const std::string& what, std::span<const uint8_t> header, std::span<const uint8_t> out,
              std::span<uint8_t> in, bool secret = false, KeyslotManager::Lease lease = {});
  // The same, returning the raw result (execute_raw).
  Result<RawResult> sync_raw(uint16_t q, const std::string& what, RingRequest r);
  // An Io built and run synchronously (the facade's read/write/... wrappers).
  Status sync_io(const Io& io);
};

Error prefixed(const std::string& what, const Error& e);

}  // namespace iceblk::driver
