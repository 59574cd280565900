// Connect, negotiate and set up rings; reset and reconnect repeat the same steps.
#include <algorithm>

#include "driver/device_impl.h"

namespace iceblk::driver {

namespace {

using blk::feature_bit;

// Device feature bits this driver understands (and accepts when offered).
constexpr uint64_t kKnownFeatures =
    feature_bit(blk::kFeatureSizeMax) | feature_bit(blk::kFeatureSegMax) | feature_bit(blk::kFeatureGeometry) |
    feature_bit(blk::kFeatureRo) | feature_bit(blk::kFeatureBlkSize) | feature_bit(blk::kFeatureFlush) |
    feature_bit(blk::kFeatureTopology) | feature_bit(blk::kFeatureConfigWce) | feature_bit(blk::kFeatureMq) |
    feature_bit(blk::kFeatureDiscard) | feature_bit(blk::kFeatureWriteZeroes) | feature_bit(blk::kFeatureVersion1);

DeviceConfig to_device_config(std::vector<uint8_t> raw) {
  const blk::BlkConfig c = blk::decode_config(raw);
  const blk::SlotInfo si = blk::decode_slot_info(c.slot_info);
  DeviceConfig cfg;
  cfg.raw = std::move(raw);
  cfg.capacity_sectors = c.capacity;
  cfg.size_max = c.size_max;
  cfg.seg_max = c.seg_max;
  cfg.blk_size = c.blk_size;
  cfg.physical_block_exp = c.physical_block_exp;
  cfg.min_io_size = c.min_io_size;
  cfg.opt_io_size = c.opt_io_size;
  cfg.writeback = c.writeback;
  cfg.num_queues = c.num_queues;
  cfg.max_discard_sectors = c.max_discard_sectors;
  cfg.max_discard_seg = c.max_discard_seg;
  cfg.discard_sector_alignment = c.discard_sector_alignment;
  cfg.max_write_zeroes_sectors = c.max_write_zeroes_sectors;
  cfg.max_write_zeroes_seg = c.max_write_zeroes_seg;
  cfg.write_zeroes_may_unmap = c.write_zeroes_may_unmap;
  cfg.max_slots = si.max_slots;
  cfg.slot_offset = si.slot_offset;
  cfg.capability_num = c.capability_num;
  if (cfg.raw.size() >= blk::kConfigSize) cfg.key_generation = c.key_generation;
  return cfg;
}

}  // namespace

Status Device::Impl::read_config_space() {
  for (uint32_t size : blk::kConfigSizes) {
    auto r = frontend->get_config(0, size);
    if (!r) {
      if (r.error().code == Errc::kOutOfRange) continue;
      return tl::unexpected(r.error());
    }
    config = to_device_config(std::move(*r));
    return {};
  }
  return fail(Errc::kUnsupported, "vhost-user GET_CONFIG: the back-end answers no config size we know");
}

Status Device::Impl::share_memory() {
  vhost_user::SharedRegion region{mem->guest_base(), mem->size(), mem->guest_base(), 0, mem->fd()};
  return frontend->set_mem_table(std::span(&region, 1));
}

Status Device::Impl::connect_and_negotiate() {
  vhost_user::Frontend::Options fo;
  fo.reply_timeout_ms = opts.reply_timeout_ms;
  ICEBLK_ASSIGN_OR_RETURN(frontend, vhost_user::Frontend::connect(opts.socket_path, fo));
  ICEBLK_ASSIGN_OR_RETURN(offered, frontend->get_features());
  if (!blk::has_feature(offered, blk::kFeatureVersion1)) {
    return fail(Errc::kUnsupported, "{}: the device does not offer VIRTIO_F_VERSION_1", opts.socket_path);
  }
  uint64_t wanted = kKnownFeatures;
  if (opts.want_ice) {
    wanted |= feature_bit(blk::kFeatureIce);
    if (opts.want_inband_keys) wanted |= feature_bit(blk::kFeatureIceInbandKeys);
  }
  if (opts.event_idx) wanted |= feature_bit(blk::kFeatureEventIdx);
  if (opts.indirect) wanted |= feature_bit(blk::kFeatureIndirectDesc);
  // Bit 23 is only valid with bit 22 (spec §1).
  if (!blk::has_feature(offered, blk::kFeatureIce)) wanted &= ~feature_bit(blk::kFeatureIceInbandKeys);
  ICEBLK_ASSIGN_OR_RETURN(auto n, frontend->handshake(wanted));
  if ((n.protocol_features & vhost_user::pf_bit(vhost_user::kPfConfig)) == 0) {
    return fail(Errc::kUnsupported, "{}: the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG", opts.socket_path);
  }
  wire_features = n.features;
  negotiated = n.features & ~vhost_user::kProtocolFeaturesBit;
  protocol = n.protocol_features;
  device_queues = n.num_queues;
  header_size = has(blk::kFeatureIce) ? blk::kIceHeaderSize : blk::kPlainHeaderSize;
  ICEBLK_TRY(share_memory());
  return read_config_space();
}

Status Device::Impl::choose_queue_count() {
  uint16_t avail = device_queues;
  if (has(blk::kFeatureMq) && config.num_queues != 0) {
    avail = std::min(avail, config.num_queues);
  } else if (!has(blk::kFeatureMq)) {
    avail = 1;
  }
  num_queues = opts.num_queues == 0 ? avail : opts.num_queues;
  if (num_queues > avail) {
    return fail(Errc::kInvalidArgument, "{} queues requested, the device has {}", num_queues, avail);
  }
  return {};
}

Status Device::Impl::start_queues() {
  QueueRunner::Options qo;
  qo.size = opts.queue_size;
  qo.mode = opts.completion;
  qo.event_idx = has(blk::kFeatureEventIdx);
  qo.indirect = has(blk::kFeatureIndirectDesc);
  qo.max_seg = 1u << 30;
  if (has(blk::kFeatureSizeMax) && config.size_max >= 4096) qo.max_seg = config.size_max & ~uint32_t{511};
  qo.conn_fd = frontend->connection().fd();
  for (uint16_t i = 0; i < num_queues; ++i) {
    qo.index = i;
    ICEBLK_ASSIGN_OR_RETURN(auto q, QueueRunner::create(*pool, qo));
    const virtio::QueueConfig qc = q->ring().device_config();
    vhost_user::VringSetup s;
    s.size = qc.size;
    s.desc_user_addr = qc.desc.value;
    s.avail_user_addr = qc.avail.value;
    s.used_user_addr = qc.used.value;
    s.base = 0;
    s.kick_fd = q->kick_fd();
    s.call_fd = q->call_fd();
    ICEBLK_TRY(frontend->setup_vring(i, s).map_error(
        [&](const Error& e) { return prefixed(fmt::format("set up queue {}", i), e); }));
    q->start();
    // Back-ends should not rely on a first kick, but older ones start on it.
    signal_fd(q->kick_fd());
    queues.push_back(std::move(q));
  }
  return {};
}

void Device::Impl::stop_queues() {
  for (auto& q : queues) q->stop();
}

bool Device::Impl::keys_lost() const {
  // Proposed config field key_generation (docs/protocol.md §2): it changes exactly
  // when the device lost keys. A device without it: spec §8 (in-band keys die with a
  // reset or reconnect, out-of-band keys survive).
  if (config.raw.size() >= blk::kConfigSize) return config.key_generation != keys_generation;
  return key_mode == KeyMode::kInBand;
}

Status Device::Impl::restore_keys() {
  if (!keyslots || !keys_lost()) return {};
  if (key_mode == KeyMode::kOutOfBand && !opts.secure_world_socket.empty()) {
    // A restarted daemon runs a new secure world: the old channel is gone.
    std::lock_guard lk(secure_world_mu);
    secure_world.reset();
    auto c = SecureWorldClient::connect(opts.secure_world_socket);
    if (!c)
      return tl::unexpected(
          prefixed(fmt::format("secure world {}", opts.secure_world_socket), c.error()));
    secure_world.emplace(std::move(*c));
  }
  ICEBLK_TRY(keyslots->reprogram_all());
  keys_generation = config.key_generation;
  return {};
}

Result<std::unique_ptr<Device>> Device::connect(const ConnectOptions& opts) {
  if (opts.queue_size == 0 || (opts.queue_size & (opts.queue_size - 1)) != 0 || opts.queue_size > 32768) {
    return fail(Errc::kInvalidArgument, "queue size {} is not a power of two in 1..32768", opts.queue_size);
  }
  auto impl = std::make_unique<Impl>();
  Impl& d = *impl;
  d.opts = opts;
  ICEBLK_ASSIGN_OR_RETURN(d.mem, virtio::DriverMemory::create(opts.memory_size));
  d.pool = std::make_unique<BufferPool>(d.mem);
  ICEBLK_TRY(d.connect_and_negotiate());
  ICEBLK_TRY(d.choose_queue_count());
  std::unique_ptr<Device> dev(new Device(std::move(impl)));
  ICEBLK_TRY(d.start_queues());
  if (d.has(blk::kFeatureIce)) ICEBLK_TRY(d.setup_keys());
  return dev;
}

Status Device::reset() {
  Impl& d = *impl_;
  if (d.on_completion_thread()) return fail(Errc::kBusy, "reset from a completion callback");
  drain();
  d.stop_queues();
  d.queues.clear();
  ICEBLK_TRY(d.frontend->reset_device());
  ICEBLK_TRY(d.frontend->set_features(d.wire_features));
  ICEBLK_TRY(d.share_memory());
  ICEBLK_TRY(d.read_config_space());  // key_generation after the reset
  ICEBLK_TRY(d.start_queues());
  return d.restore_keys();
}

Result<bool> Device::refresh_keys() {
  Impl& d = *impl_;
  if (d.on_completion_thread()) return fail(Errc::kBusy, "refresh_keys from a completion callback");
  ICEBLK_TRY(d.read_config_space());
  if (!d.keyslots || !d.keys_lost()) return false;
  ICEBLK_TRY(d.restore_keys());
  return true;
}

Status Device::reconnect() {
  Impl& d = *impl_;
  if (d.on_completion_thread()) return fail(Errc::kBusy, "reconnect from a completion callback");
  d.stop_queues();
  d.frontend.reset();
  for (auto& q : d.queues) q->fail_all(Error(Errc::kClosed, "reconnecting"));
  d.queues.clear();
  const uint64_t before = d.negotiated;
  ICEBLK_TRY(d.connect_and_negotiate());
  if (d.negotiated != before) {
    return fail(Errc::kProtocol, "reconnect: the device now negotiates features {:#x} instead of {:#x}", d.negotiated,
                before);
  }
  ICEBLK_TRY(d.start_queues());
  return d.restore_keys();
}

}  // namespace iceblk::driver
