#include "daemon/vhost_blk_device.h"

#include "base/log.h"
#include "daemon/sandbox.h"

namespace iceblk::daemon {

VhostBlkDevice::VhostBlkDevice(std::shared_ptr<blk::BlkDevice> dev, bool allow_unsealed_memory)
    : dev_(std::move(dev)), allow_unsealed_memory_(allow_unsealed_memory), processors_(dev_->config().num_queues) {}

VhostBlkDevice::~VhostBlkDevice() = default;

uint64_t VhostBlkDevice::features() const { return dev_->offered_features(); }
uint16_t VhostBlkDevice::num_queues() const { return dev_->config().num_queues; }
uint16_t VhostBlkDevice::max_queue_size() const { return dev_->config().queue_size; }

Result<std::vector<uint8_t>> VhostBlkDevice::get_config(uint32_t offset, uint32_t size) {
  std::vector<uint8_t> out(size);
  ICEBLK_TRY(dev_->read_config(offset, out));
  return out;
}

Status VhostBlkDevice::set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t /*flags*/) {
  // Only `writeback` is writable, with or without the migration flag: every other
  // field is derived from the device's settings and restored from them.
  return dev_->write_config(offset, data);
}

Status VhostBlkDevice::set_features(uint64_t negotiated) { return dev_->set_features(negotiated); }

void VhostBlkDevice::reset() {
  // All queues are stopped here (the session guarantees it), so no processor exists.
  dev_->reset();
}

Status VhostBlkDevice::queue_started(uint16_t q) {
  if (q >= processors_.size()) return fail(Errc::kInvalidArgument, "queue {} does not exist", q);
  ICEBLK_ASSIGN_OR_RETURN(processors_[q], dev_->make_queue_processor(q)
                                              .map_error([&](const Error& e) {
                                                return make_error(e.code, "queue {}: cannot start: {}", q, e.message);
                                              }));
  return {};
}

void VhostBlkDevice::queue_stopped(uint16_t q) {
  if (q < processors_.size()) processors_[q].reset();
}

int VhostBlkDevice::queue_event_fd(uint16_t q) {
  if (q >= processors_.size() || !processors_[q]) return -1;
  return processors_[q]->completion_fd();
}

Result<bool> VhostBlkDevice::process_queue(uint16_t q, virtio::SplitQueue& vq) {
  testing_seccomp_probe();  // testing only: daemon/sandbox.h
  if (q >= processors_.size() || !processors_[q]) {
    return fail(Errc::kIo, "queue {} has no processor (start failed)", q);
  }
  return processors_[q]->process(vq);
}

bool VhostBlkDevice::drain_queue(uint16_t q, virtio::SplitQueue& vq) {
  if (q >= processors_.size() || !processors_[q]) return false;
  if (processors_[q]->in_flight() == 0) return false;
  processors_[q]->drain(vq);
  return vq.should_notify();
}

}  // namespace iceblk::daemon
