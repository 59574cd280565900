#include "blk/wire.h"

#include <fmt/format.h>

namespace iceblk::blk {

namespace {

struct FeatureName {
  unsigned bit;
  const char* name;
};

// Every bit a virtio-blk device may offer, by its spec name without the prefix.
constexpr FeatureName kFeatureNames[] = {
    {kFeatureSizeMax, "SIZE_MAX"},
    {kFeatureSegMax, "SEG_MAX"},
    {kFeatureGeometry, "GEOMETRY"},
    {kFeatureRo, "RO"},
    {kFeatureBlkSize, "BLK_SIZE"},
    {kFeatureFlush, "FLUSH"},
    {kFeatureTopology, "TOPOLOGY"},
    {kFeatureConfigWce, "CONFIG_WCE"},
    {kFeatureMq, "MQ"},
    {kFeatureDiscard, "DISCARD"},
    {kFeatureWriteZeroes, "WRITE_ZEROES"},
    {kFeatureLifetime, "LIFETIME"},
    {kFeatureSecureErase, "SECURE_ERASE"},
    {kFeatureZoned, "ZONED"},
    {kFeatureIce, "ICE"},
    {kFeatureIceInbandKeys, "ICE_INBAND_KEYS"},
    {VIRTIO_F_NOTIFY_ON_EMPTY, "NOTIFY_ON_EMPTY"},
    {kFeatureIndirectDesc, "INDIRECT_DESC"},
    {kFeatureEventIdx, "EVENT_IDX"},
    {kFeatureVhostUserProtocol, "PROTOCOL_FEATURES"},
    {kFeatureVersion1, "VERSION_1"},
    {VIRTIO_F_ACCESS_PLATFORM, "ACCESS_PLATFORM"},
    {virtio::kFeatureRingPacked, "RING_PACKED"},
    {VIRTIO_F_IN_ORDER, "IN_ORDER"},
    {VIRTIO_F_RING_RESET, "RING_RESET"},
};

}  // namespace

std::string feature_names(uint64_t features) {
  std::string s;
  for (unsigned b = 0; b < 64; ++b) {
    if (!has_feature(features, b)) continue;
    if (!s.empty()) s += ' ';
    const char* name = nullptr;
    for (const auto& f : kFeatureNames) {
      if (f.bit == b) name = f.name;
    }
    s += name != nullptr ? std::string(name) : fmt::format("bit{}", b);
  }
  return s;
}

std::vector<uint8_t> encode_capabilities(std::span<const ice::Capability> caps) {
  std::vector<uint8_t> out(caps.size() * sizeof(CryptoCap));
  for (size_t i = 0; i < caps.size(); ++i) {
    const CryptoCap c{static_cast<uint8_t>(caps[i].alg), caps[i].data_unit_size_exp,
                      static_cast<uint8_t>(caps[i].key_size), 0};
    std::memcpy(out.data() + i * sizeof c, &c, sizeof c);
  }
  return out;
}

std::vector<ice::Capability> decode_capabilities(std::span<const uint8_t> bytes) {
  std::vector<ice::Capability> caps;
  for (size_t off = 0; off + sizeof(CryptoCap) <= bytes.size(); off += sizeof(CryptoCap)) {
    const auto c = load_obj<CryptoCap>(bytes.data() + off);
    caps.push_back({static_cast<ice::Algorithm>(c.alg), c.data_unit_size_exp, static_cast<ice::KeySize>(c.key_size)});
  }
  return caps;
}

}  // namespace iceblk::blk
