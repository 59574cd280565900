// A small but real vhost_user::Backend for the session/server tests: each chain's
// readable bytes are copied, bitwise inverted, into its writable buffers (so a test
// can tell the device really processed them). In `deferred` mode the device only
// pops chains and completes them from drain_queue(), which lets tests check that
// GET_VRING_BASE waits for in-flight requests.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "vhost_user/backend.h"
#include "vhost_user/messages.h"
#include "virtio/features.h"

namespace iceblk::vhost_user::testing {

class EchoDevice : public Backend {
 public:
  static constexpr uint64_t kFeatureVersion1 = virtio::feature_bit(virtio::kFeatureVersion1);
  static constexpr uint64_t kFeatureEventIdx = virtio::feature_bit(virtio::kFeatureEventIdx);
  static constexpr uint64_t kFeatureIndirect = virtio::feature_bit(virtio::kFeatureIndirectDesc);
  static constexpr uint64_t kFeatureDevice5 = 1ull << 5;      // some device-specific bit
  static constexpr uint64_t kFeatureLogAll = virtio::feature_bit(kFLogAll);  // offered by mistake: must be masked
  static constexpr uint32_t kConfigSize = 64;
  static constexpr uint32_t kWritableOffset = 16;  // bytes [16, 20) are driver-writable
  static constexpr uint32_t kWritableSize = 4;

  explicit EchoDevice(uint16_t queues = 2, uint16_t max_queue_size = 256);

  uint64_t features() const override {
    return kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirect | kFeatureDevice5 | kFeatureLogAll;
  }
  uint64_t protocol_features() const override { return extra_protocol_features; }
  bool accepts_unsealed_memory() const override { return accept_unsealed.load(); }
  uint16_t num_queues() const override { return queues_; }
  uint16_t max_queue_size() const override { return max_queue_size_; }
  Result<std::vector<uint8_t>> get_config(uint32_t offset, uint32_t size) override;
  Status set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t flags) override;
  Status set_features(uint64_t negotiated) override;
  void reset() override;
  Status queue_started(uint16_t q) override;
  void queue_stopped(uint16_t q) override;
  Result<bool> process_queue(uint16_t q, virtio::SplitQueue& vq) override;
  bool drain_queue(uint16_t q, virtio::SplitQueue& vq) override;

  // Knobs (set before the queue starts).
  uint64_t extra_protocol_features = 0;
  std::atomic<bool> deferred{false};
  std::atomic<bool> fail_process{false};  // process_queue returns an error
  std::atomic<bool> refuse_features{false};
  std::atomic<bool> accept_unsealed{false};  // memory not sealed F_SEAL_SHRINK accepted

  // Observations.
  std::atomic<int> resets{0};
  std::atomic<int> started{0};
  std::atomic<int> stopped{0};
  std::atomic<int> processed{0};   // chains completed with data
  std::atomic<int> bad_chains{0};  // BadChain completions
  std::atomic<int> drained{0};     // chains completed by drain_queue
  std::atomic<int> deferred_chains{0};  // chains popped and held in deferred mode
  std::atomic<uint64_t> negotiated{0};
  std::atomic<bool> process_on_foreign_thread{false};  // process_queue ran off the worker
  std::vector<uint8_t> config_snapshot() const;

 private:
  Status complete(virtio::SplitQueue& vq, const virtio::DescriptorChain& c, uint32_t& written);

  const uint16_t queues_;
  const uint16_t max_queue_size_;
  mutable std::mutex mu_;
  std::vector<uint8_t> config_;
  std::vector<std::thread::id> worker_ids_;
  std::vector<std::vector<virtio::DescriptorChain>> pending_;  // deferred chains, per queue
};

}  // namespace iceblk::vhost_user::testing
