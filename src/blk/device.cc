#include "blk/device.h"

#include <sys/random.h>

#include <cstring>

#include "base/checked.h"
#include "base/log.h"
#include "blk/queue_processor.h"

namespace iceblk::blk {

namespace {

std::vector<ice::Capability> default_capabilities(const ice::Engine& e) {
  using A = ice::Algorithm;
  using K = ice::KeySize;
  return ice::capabilities_for({{A::kAesXts, K::k128}, {A::kAesXts, K::k256}, {A::kEssivAesCbc, K::k128}},
                               e.allow_ecb());
}

}  // namespace

BlkDevice::BlkDevice(BlkDeviceConfig cfg, std::shared_ptr<backend::BlockBackend> backend)
    : cfg_(std::move(cfg)),
      backend_(std::move(backend)),
      stats_(std::make_unique<QueueStats[]>(cfg_.num_queues)) {}

BlkDevice::~BlkDevice() = default;

Result<std::unique_ptr<BlkDevice>> BlkDevice::create(BlkDeviceConfig cfg,
                                                     std::shared_ptr<backend::BlockBackend> backend) {
  if (!backend) return fail(Errc::kInvalidArgument, "blk: no backend");
  if (cfg.num_queues == 0 || cfg.num_queues > kMaxQueues) {
    return fail(Errc::kInvalidArgument, "blk: num_queues {} not in 1..{}", cfg.num_queues, kMaxQueues);
  }
  if (cfg.max_buffer_memory / cfg.num_queues < kMinQueueBufferMemory) {
    return fail(Errc::kInvalidArgument, "blk: max_buffer_memory {} gives each of the {} queues less than {} bytes",
                cfg.max_buffer_memory, cfg.num_queues, kMinQueueBufferMemory);
  }
  if (cfg.queue_size < 4 || cfg.queue_size > virtio::kMaxQueueSize || !is_power_of_two(cfg.queue_size)) {
    return fail(Errc::kInvalidArgument, "blk: queue_size {} is not a power of two in 4..{}", cfg.queue_size,
                virtio::kMaxQueueSize);
  }
  if (cfg.serial.size() > kIdBytes) {
    return fail(Errc::kInvalidArgument, "blk: serial is {} bytes, at most {}", cfg.serial.size(), kIdBytes);
  }
  if (cfg.physical_block_exp > 15) {
    return fail(Errc::kInvalidArgument, "blk: physical_block_exp {} too large", cfg.physical_block_exp);
  }
  if (cfg.max_discard_seg == 0 || cfg.max_write_zeroes_seg == 0) {
    return fail(Errc::kInvalidArgument, "blk: max_discard_seg / max_write_zeroes_seg must be >= 1");
  }
  const uint64_t size = backend->size_bytes();
  if (size == 0 || size % kSectorSize != 0) {
    return fail(Errc::kInvalidArgument, "blk: backend size {} is not a positive multiple of 512", size);
  }
  auto dev = std::unique_ptr<BlkDevice>(new BlkDevice(std::move(cfg), std::move(backend)));
  dev->capacity_ = size / kSectorSize;
  dev->read_only_ = dev->cfg_.read_only || dev->backend_->read_only();
  dev->discard_ = dev->backend_->supports_discard() && !dev->read_only_;
  dev->writeback_ = dev->cfg_.writeback;
  // A fresh random generation: a driver that programmed keys into an earlier
  // instance (before a daemon restart) must see a different value.
  uint32_t gen = 0;
  if (::getrandom(&gen, sizeof gen, 0) != static_cast<ssize_t>(sizeof gen)) {
    return tl::unexpected(errno_error(Errc::kIo, "blk: getrandom for key_generation", errno));
  }
  dev->key_generation_ = gen;
  if (dev->cfg_.engine) {
    ICEBLK_ASSIGN_OR_RETURN(dev->range_, dev->cfg_.engine->vm_range(dev->cfg_.vm));
    if (dev->range_.count == 0 || dev->range_.count > 255 || dev->range_.offset > 255) {
      return fail(Errc::kInvalidArgument, "blk: VM slot range [{}, +{}) does not fit slot_info",
                  dev->range_.offset, dev->range_.count);
    }
    dev->caps_ = dev->cfg_.capabilities.empty() ? default_capabilities(*dev->cfg_.engine)
                                                : dev->cfg_.capabilities;
    if (dev->caps_.size() > UINT16_MAX) return fail(Errc::kInvalidArgument, "blk: too many capabilities");
  }

  uint64_t f = feature_bit(kFeatureVersion1) | feature_bit(kFeatureIndirectDesc) |
               feature_bit(kFeatureEventIdx) | feature_bit(kFeatureSegMax) | feature_bit(kFeatureBlkSize) |
               feature_bit(kFeatureTopology) | feature_bit(kFeatureFlush) | feature_bit(kFeatureConfigWce);
  if (dev->cfg_.num_queues > 1) f |= feature_bit(kFeatureMq);
  if (dev->discard_) f |= feature_bit(kFeatureDiscard) | feature_bit(kFeatureWriteZeroes);
  if (dev->read_only_) f |= feature_bit(kFeatureRo);
  if (dev->cfg_.engine) {
    f |= feature_bit(kFeatureIce);
    if (dev->cfg_.key_mode == KeyMode::kInBand) f |= feature_bit(kFeatureIceInbandKeys);
  }
  dev->offered_ = f;
  return dev;
}

Status BlkDevice::set_features(uint64_t negotiated) {
  // Bit 30 (VHOST_USER_F_PROTOCOL_FEATURES) belongs to the vhost-user transport.
  negotiated &= ~feature_bit(kFeatureVhostUserProtocol);
  if ((negotiated & ~offered_) != 0) {
    return fail(Errc::kInvalidArgument, "features {:#x} were not offered", negotiated & ~offered_);
  }
  if (has_feature(negotiated, kFeatureIceInbandKeys) && !has_feature(negotiated, kFeatureIce)) {
    return fail(Errc::kInvalidArgument, "VIRTIO_BLK_F_ICE_INBAND_KEYS without VIRTIO_BLK_F_ICE");
  }
  negotiated_.store(negotiated, std::memory_order_release);
  // VIRTIO §5.2.5: without FLUSH the device is writethrough.
  if (!has_feature(negotiated, kFeatureFlush)) writeback_ = false;
  return {};
}

uint32_t BlkDevice::header_size() const {
  return has_feature(negotiated_features(), kFeatureIce) ? kIceHeaderSize : kPlainHeaderSize;
}

bool BlkDevice::writeback() const {
  return has_feature(negotiated_features(), kFeatureFlush) && writeback_.load(std::memory_order_relaxed);
}

std::array<uint8_t, kConfigSize> BlkDevice::config_bytes() const {
  BlkConfig c{};
  c.capacity = capacity_;
  c.seg_max = static_cast<uint32_t>(cfg_.queue_size - 2);
  c.blk_size = static_cast<uint32_t>(kSectorSize);
  c.physical_block_exp = cfg_.physical_block_exp;
  c.alignment_offset = 0;
  c.min_io_size = cfg_.min_io_size;
  c.opt_io_size = cfg_.opt_io_size;
  c.writeback = writeback_.load(std::memory_order_relaxed) ? 1 : 0;
  c.num_queues = cfg_.num_queues;
  if (discard_) {
    c.max_discard_sectors = cfg_.max_discard_sectors;
    c.max_discard_seg = cfg_.max_discard_seg;
    c.discard_sector_alignment = cfg_.discard_sector_alignment;
    c.max_write_zeroes_sectors = cfg_.max_write_zeroes_sectors;
    c.max_write_zeroes_seg = cfg_.max_write_zeroes_seg;
    c.write_zeroes_may_unmap = 1;
  }
  if (cfg_.engine) {  // spec §2: read as 0 when bit 22 is not offered
    c.slot_info = encode_slot_info({static_cast<uint8_t>(range_.count), static_cast<uint8_t>(range_.offset)});
    c.capability_num = static_cast<uint16_t>(caps_.size());
    c.key_generation = key_generation();
  }
  return encode_config(c);
}

Status BlkDevice::read_config(uint32_t offset, std::span<uint8_t> out) const {
  if (offset > kConfigSize || out.size() > kConfigSize - offset) {
    return fail(Errc::kOutOfRange, "config read {}+{} beyond {} bytes", offset, out.size(), kConfigSize);
  }
  const auto bytes = config_bytes();
  if (!out.empty()) std::memcpy(out.data(), bytes.data() + offset, out.size());
  return {};
}

Status BlkDevice::write_config(uint32_t offset, std::span<const uint8_t> data) {
  if (offset > kConfigSize || data.size() > kConfigSize - offset) {
    return fail(Errc::kOutOfRange, "config write {}+{} beyond {} bytes", offset, data.size(), kConfigSize);
  }
  if (offset != kConfigWritebackOffset || data.size() != 1) {
    return fail(Errc::kPermissionDenied, "config write {}+{}: only writeback (offset {}) is writable", offset,
                data.size(), kConfigWritebackOffset);
  }
  if (!has_feature(negotiated_features(), kFeatureConfigWce)) {
    return fail(Errc::kPermissionDenied, "writeback is read-only without VIRTIO_BLK_F_CONFIG_WCE");
  }
  if (data[0] > 1) return fail(Errc::kInvalidArgument, "writeback value {} is not 0 or 1", data[0]);
  writeback_.store(data[0] == 1, std::memory_order_relaxed);
  return {};
}

void BlkDevice::reset() {
  negotiated_.store(0, std::memory_order_release);
  writeback_ = cfg_.writeback;
  // Spec §8: in-band keys die with the device state; out-of-band keys belong to
  // the secure world.
  if (cfg_.engine && cfg_.key_mode == KeyMode::kInBand) {
    cfg_.engine->evict_range(range_);
    key_generation_.fetch_add(1, std::memory_order_acq_rel);  // the driver must reprogram
  }
}

ParseEnv BlkDevice::parse_env() const {
  ParseEnv e;
  e.features = negotiated_features();
  e.capacity_sectors = capacity_;
  e.read_only = read_only_;
  e.max_discard_sectors = cfg_.max_discard_sectors;
  e.max_discard_seg = cfg_.max_discard_seg;
  e.max_write_zeroes_sectors = cfg_.max_write_zeroes_sectors;
  e.max_write_zeroes_seg = cfg_.max_write_zeroes_seg;
  e.engine = cfg_.engine.get();
  e.slots = range_;
  e.caps = &caps_;
  return e;
}

Result<std::unique_ptr<QueueProcessor>> BlkDevice::make_queue_processor(uint16_t queue_index) {
  if (queue_index >= cfg_.num_queues) {
    return fail(Errc::kOutOfRange, "queue {} >= num_queues {}", queue_index, cfg_.num_queues);
  }
  ICEBLK_ASSIGN_OR_RETURN(auto io, backend_->make_queue(cfg_.queue_size));
  std::unique_ptr<QueueProcessor> p;
  if (!cfg_.engine) {
    // A device without ICE needs no bounce buffers (plain I/O is zero-copy).
    p.reset(new QueueProcessor(*this, queue_index, std::move(io), BouncePool{}, nullptr, 0));
  } else {
    // Bounce buffers (buffer_pool.h): the export's cap split over its queues, taken
    // from the engine-wide budget when there is one; fixed from here on.
    uint64_t share = cfg_.max_buffer_memory / cfg_.num_queues;
    uint64_t reserved = 0;
    if (cfg_.buffer_budget) {
      auto r = cfg_.buffer_budget->reserve(share, kMinQueueBufferMemory);
      if (!r) return fail(r.error().code, "queue {}: {}", queue_index, r.error().message);
      share = reserved = *r;
    }
    auto pool = BouncePool::create(share, cfg_.queue_size);
    if (!pool) {
      if (reserved > 0) cfg_.buffer_budget->release(reserved);
      return tl::unexpected(std::move(pool).error());
    }
    p.reset(new QueueProcessor(*this, queue_index, std::move(io), std::move(*pool), cfg_.buffer_budget, reserved));
  }
  if (cfg_.test_hold.enabled()) {
    ICEBLK_ASSIGN_OR_RETURN(auto hold, CompletionHold::create(cfg_.test_hold, p->io_->completion_fd()));
    p->hold_ = std::move(hold);
  }
  return p;
}

}  // namespace iceblk::blk
