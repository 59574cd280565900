#include "unit/vhost_user/echo_device.h"

#include "base/checked.h"

namespace iceblk::vhost_user::testing {

namespace {
std::vector<uint8_t> initial_config() {
  std::vector<uint8_t> c(EchoDevice::kConfigSize);
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<uint8_t>(i * 3 + 1);
  return c;
}
}  // namespace

EchoDevice::EchoDevice(uint16_t queues, uint16_t max_queue_size)
    : queues_(queues), max_queue_size_(max_queue_size), config_(initial_config()), worker_ids_(queues),
      pending_(queues) {}

std::vector<uint8_t> EchoDevice::config_snapshot() const {
  std::lock_guard lk(mu_);
  return config_;
}

Result<std::vector<uint8_t>> EchoDevice::get_config(uint32_t offset, uint32_t size) {
  const auto end = checked_add<uint64_t>(offset, size);
  if (!end || *end > kConfigSize) return fail(Errc::kOutOfRange, "config [{}, +{}) out of range", offset, size);
  std::lock_guard lk(mu_);
  return std::vector<uint8_t>(config_.begin() + offset, config_.begin() + static_cast<long>(*end));
}

Status EchoDevice::set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t flags) {
  const auto end = checked_add<uint64_t>(offset, data.size());
  if (!end || *end > kConfigSize) return fail(Errc::kOutOfRange, "config write out of range");
  const bool migrating = (flags & 1) != 0;
  if (!migrating && (offset < kWritableOffset || *end > kWritableOffset + kWritableSize)) {
    return fail(Errc::kPermissionDenied, "config write to read-only bytes");
  }
  std::lock_guard lk(mu_);
  std::copy(data.begin(), data.end(), config_.begin() + offset);
  return {};
}

Status EchoDevice::set_features(uint64_t n) {
  if (refuse_features) return fail(Errc::kInvalidArgument, "features refused by test");
  negotiated = n;
  return {};
}

void EchoDevice::reset() {
  std::lock_guard lk(mu_);
  config_ = initial_config();
  negotiated = 0;
  for (auto& p : pending_) p.clear();
  ++resets;
}

Status EchoDevice::queue_started(uint16_t q) {
  {
    std::lock_guard lk(mu_);
    worker_ids_.at(q) = std::this_thread::get_id();
  }
  ++started;
  return {};
}

void EchoDevice::queue_stopped(uint16_t) { ++stopped; }

Status EchoDevice::complete(virtio::SplitQueue& vq, const virtio::DescriptorChain& c, uint32_t& written) {
  std::vector<uint8_t> in(c.readable_len);
  size_t off = 0;
  for (const auto& s : c.readable) {
    ICEBLK_TRY(vq.memory().read(s.addr, std::span<uint8_t>(in.data() + off, s.len)));
    off += s.len;
  }
  for (auto& b : in) b = static_cast<uint8_t>(~b);
  written = 0;
  off = 0;
  for (const auto& s : c.writable) {
    if (off >= in.size()) break;
    const size_t n = std::min<size_t>(s.len, in.size() - off);
    ICEBLK_TRY(vq.memory().write(s.addr, std::span<const uint8_t>(in.data() + off, n)));
    off += n;
    written += static_cast<uint32_t>(n);
  }
  return vq.push_used(c.head, written);
}

Result<bool> EchoDevice::process_queue(uint16_t q, virtio::SplitQueue& vq) {
  {
    std::lock_guard lk(mu_);
    if (worker_ids_.at(q) != std::this_thread::get_id()) process_on_foreign_thread = true;
  }
  if (fail_process) return fail(Errc::kProtocol, "test device: queue {} broken on purpose", q);
  bool pushed = false;
  for (;;) {
    ICEBLK_ASSIGN_OR_RETURN(auto next, vq.pop());
    if (!next) {
      vq.enable_notifications();
      ICEBLK_ASSIGN_OR_RETURN(next, vq.pop());  // re-check after publishing avail_event
      if (!next) break;
    }
    if (auto* bad = std::get_if<virtio::BadChain>(&*next)) {
      ICEBLK_TRY(vq.push_used(bad->head, 0));
      ++bad_chains;
      pushed = true;
      continue;
    }
    auto& chain = std::get<virtio::DescriptorChain>(*next);
    if (deferred) {
      std::lock_guard lk(mu_);
      pending_[q].push_back(std::move(chain));
      ++deferred_chains;
      continue;
    }
    uint32_t written = 0;
    ICEBLK_TRY(complete(vq, chain, written));
    ++processed;
    pushed = true;
  }
  return pushed && vq.should_notify();
}

bool EchoDevice::drain_queue(uint16_t q, virtio::SplitQueue& vq) {
  std::vector<virtio::DescriptorChain> chains;
  {
    std::lock_guard lk(mu_);
    chains.swap(pending_[q]);
  }
  for (const auto& c : chains) {
    uint32_t written = 0;
    if (complete(vq, c, written)) ++drained;
  }
  return !chains.empty() && vq.should_notify();
}

}  // namespace iceblk::vhost_user::testing
