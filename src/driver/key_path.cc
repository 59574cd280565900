// Where keys go (spec §6 / §7): in-band mode programs virtual slots with
// PROGRAM_KEY / EVICT_KEY on queue 0; out-of-band mode sends them through the secure
// world into physical slot slot_offset + virtual. Named keys sit on top of either
// (KeyslotManager). Key bytes never appear in messages, and every buffer that held
// them is zeroised.
#include <algorithm>
#include <array>

#include "base/secret_bytes.h"
#include "driver/device_impl.h"
#include "ice/key_blob.h"

namespace iceblk::driver {

Status Device::Impl::program_slot(uint8_t wire_slot, const ice::Key& key, uint16_t q) {
  std::array<uint8_t, ice::kKeyBlobSize> blob{};
  Status st = ice::encode_key_blob(key.mode(), key.material(), blob);
  if (st) {
    auto h = blk::encode_header(header_size, blk::kTypeIceProgramKey, 0, wire_slot);
    st = sync(q, fmt::format("program-key slot {}", wire_slot), h, blob, {}, /*secret=*/true);
  }
  secure_zero(blob.data(), blob.size());
  return st;
}

Status Device::Impl::evict_slot(uint8_t wire_slot, uint16_t q) {
  auto h = blk::encode_header(header_size, blk::kTypeIceEvictKey, 0, wire_slot);
  return sync(q, fmt::format("evict-key slot {}", wire_slot), h, {}, {});
}

Status Device::Impl::setup_keys() {
  key_mode = has(blk::kFeatureIceInbandKeys) ? KeyMode::kInBand : KeyMode::kOutOfBand;
  if (config.capability_num > 0) {
    std::vector<uint8_t> buf(size_t{config.capability_num} * sizeof(blk::CryptoCap));
    Io io;
    io.op = Op::kGetCapabilities;
    io.in = buf;
    ICEBLK_ASSIGN_OR_RETURN(BuiltRequest b, build(io));
    ICEBLK_TRY(sync(0, b.what, b.header, b.out, b.in));
    capabilities = blk::decode_capabilities(buf);
  }
  if (key_mode == KeyMode::kOutOfBand && !opts.secure_world_socket.empty()) {
    auto c = SecureWorldClient::connect(opts.secure_world_socket, {.timeout = opts.request_timeout});
    if (!c) return tl::unexpected(prefixed(fmt::format("secure world {}", opts.secure_world_socket), c.error()));
    secure_world.emplace(std::move(*c));
  }
  auto program = [this](uint32_t slot, const ice::Key& key) -> Status {
    if (key_mode == KeyMode::kInBand) return program_slot(static_cast<uint8_t>(slot), key, 0);
    std::lock_guard lk(secure_world_mu);
    if (!secure_world) {
      return fail(Errc::kUnsupported,
                  "out-of-band key mode (no VIRTIO_BLK_F_ICE_INBAND_KEYS): give the secure-world socket");
    }
    return secure_world->set_key(PhysSlot{config.slot_offset + slot}, key.mode(), key.material())
        .map_error([&](const Error& e) {
          return prefixed(fmt::format("secure world set-key physical slot {}", config.slot_offset + slot), e);
        });
  };
  auto evict = [this](uint32_t slot) -> Status {
    if (key_mode == KeyMode::kInBand) return evict_slot(static_cast<uint8_t>(slot), 0);
    std::lock_guard lk(secure_world_mu);
    if (!secure_world) return fail(Errc::kUnsupported, "out-of-band key mode: no secure-world socket");
    return secure_world->invalidate_key(PhysSlot{config.slot_offset + slot});
  };
  if (config.max_slots > 0) keyslots = std::make_unique<KeyslotManager>(config.max_slots, program, evict);
  keys_generation = config.key_generation;  // nothing programmed yet: nothing lost
  return {};
}

Status Device::program_key(uint8_t slot, const ice::Key& key, uint16_t q) {
  if (impl_->key_mode != KeyMode::kInBand) {
    return fail(Errc::kUnsupported, "program-key slot {}: in-band keys (VIRTIO_BLK_F_ICE_INBAND_KEYS) not negotiated",
                slot);
  }
  return impl_->program_slot(slot, key, q);
}

Status Device::evict_key(uint8_t slot, uint16_t q) {
  if (impl_->key_mode != KeyMode::kInBand) {
    return fail(Errc::kUnsupported, "evict-key slot {}: in-band keys (VIRTIO_BLK_F_ICE_INBAND_KEYS) not negotiated",
                slot);
  }
  return impl_->evict_slot(slot, q);
}

Status Device::add_key(const std::string& name, const ice::CryptoMode& mode, std::span<const uint8_t> key) {
  const std::string alg = ice::algorithm_name(mode.alg, mode.key_size);
  if (!ice()) {
    return fail(Errc::kUnsupported, "key '{}': the device does not offer inline encryption (VIRTIO_BLK_F_ICE)", name);
  }
  ICEBLK_ASSIGN_OR_RETURN(size_t need, ice::key_length(mode.alg, mode.key_size)
                                           .map_error([&](const Error& e) { return prefixed("key '" + name + "'", e); }));
  if (key.size() != need) {
    return fail(Errc::kInvalidArgument, "key '{}': {} needs a {}-byte key, got {} bytes", name, alg, need, key.size());
  }
  auto exp = ice::data_unit_size_exp(mode.data_unit_size);
  if (!exp) return fail(Errc::kInvalidArgument, "key '{}': bad data unit size {}", name, mode.data_unit_size);
  const ice::Capability want{mode.alg, *exp, mode.key_size};
  const auto& caps = impl_->capabilities;
  if (std::find(caps.begin(), caps.end(), want) == caps.end()) {
    return fail(Errc::kUnsupported, "key '{}': the device does not advertise {} with {}-byte data units", name, alg,
                mode.data_unit_size);
  }
  if (!impl_->keyslots) return fail(Errc::kUnsupported, "key '{}': the device has no keyslots", name);
  ICEBLK_ASSIGN_OR_RETURN(ice::Key k, ice::Key::create(mode, key).map_error(
                                          [&](const Error& e) { return prefixed("key '" + name + "'", e); }));
  return impl_->keyslots->add_key(name, std::move(k));
}

Status Device::remove_key(const std::string& name) {
  if (!impl_->keyslots) return fail(Errc::kNotFound, "no key named '{}'", name);
  return impl_->keyslots->remove_key(name);
}

Status Device::reprogram_keys() {
  if (!impl_->keyslots) return {};
  return impl_->keyslots->reprogram_all();
}

KeyslotManager* Device::keyslots() { return impl_->keyslots.get(); }

}  // namespace iceblk::driver
