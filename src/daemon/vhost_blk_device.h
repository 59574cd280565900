// Adapter: serves a blk::BlkDevice through the vhost-user back-end. The session
// calls control methods on its thread; each queue's methods run on that queue's
// worker thread, which owns the queue's QueueProcessor (see vhost_user/backend.h).
#pragma once

#include <memory>
#include <vector>

#include "blk/device.h"
#include "blk/queue_processor.h"
#include "vhost_user/backend.h"

namespace iceblk::daemon {

class VhostBlkDevice final : public vhost_user::Backend {
 public:
  // allow_unsealed_memory: accept guest memory not sealed against shrinking.
  explicit VhostBlkDevice(std::shared_ptr<blk::BlkDevice> dev, bool allow_unsealed_memory = false);
  ~VhostBlkDevice() override;

  [[nodiscard]] uint64_t features() const override;
  [[nodiscard]] bool accepts_unsealed_memory() const override { return allow_unsealed_memory_; }
  [[nodiscard]] uint16_t num_queues() const override;
  [[nodiscard]] uint16_t max_queue_size() const override;
  Result<std::vector<uint8_t>> get_config(uint32_t offset, uint32_t size) override;
  Status set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t flags) override;
  Status set_features(uint64_t negotiated) override;
  void reset() override;

  Status queue_started(uint16_t q) override;
  void queue_stopped(uint16_t q) override;
  int queue_event_fd(uint16_t q) override;
  Result<bool> process_queue(uint16_t q, virtio::SplitQueue& vq) override;
  bool drain_queue(uint16_t q, virtio::SplitQueue& vq) override;
  // --poll-us: set before the export serves (read when each queue starts).
  [[nodiscard]] uint32_t poll_us() const override { return poll_us_; }
  void set_poll_us(uint32_t us) { poll_us_ = us; }

  [[nodiscard]] blk::BlkDevice& blk() { return *dev_; }

 private:
  std::shared_ptr<blk::BlkDevice> dev_;
  bool allow_unsealed_memory_ = false;
  uint32_t poll_us_ = 0;
  // Slot q is touched only by queue q's worker thread (the vector never resizes).
  std::vector<std::unique_ptr<blk::QueueProcessor>> processors_;
};

}  // namespace iceblk::daemon
