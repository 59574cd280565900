// virtio-blk + ICE wire structs and constants (spec §1-§6; VIRTIO 1.3 §5.2).
// Plain little-endian structs built from Le<T>, with static_asserts on size and
// offsets. Constants come from <linux/virtio_*.h> where the kernel defines them.
//
// This is the single home of the virtio-blk + ICE wire format for both sides: the
// device (blk/) and the driver library (driver/) use these names, the config-space
// and capability codecs below, and feature_names(). Transport bits (ring features,
// VERSION_1, vhost-user's bit 30) are defined once in virtio/features.h and
// re-exported here.
#pragma once

#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "base/le.h"
#include "base/result.h"
#include "ice/crypto_mode.h"
#include "virtio/features.h"

namespace iceblk::blk {

// --- feature bits -------------------------------------------------------------
inline constexpr unsigned kFeatureSegMax = VIRTIO_BLK_F_SEG_MAX;          // 2
inline constexpr unsigned kFeatureRo = VIRTIO_BLK_F_RO;                   // 5
inline constexpr unsigned kFeatureBlkSize = VIRTIO_BLK_F_BLK_SIZE;        // 6
inline constexpr unsigned kFeatureFlush = VIRTIO_BLK_F_FLUSH;             // 9
inline constexpr unsigned kFeatureTopology = VIRTIO_BLK_F_TOPOLOGY;       // 10
inline constexpr unsigned kFeatureConfigWce = VIRTIO_BLK_F_CONFIG_WCE;    // 11
inline constexpr unsigned kFeatureMq = VIRTIO_BLK_F_MQ;                   // 12
inline constexpr unsigned kFeatureDiscard = VIRTIO_BLK_F_DISCARD;         // 13
inline constexpr unsigned kFeatureWriteZeroes = VIRTIO_BLK_F_WRITE_ZEROES;  // 14
inline constexpr unsigned kFeatureLifetime = 15;     // VIRTIO_BLK_F_LIFETIME (not in Debian 12's UAPI)
inline constexpr unsigned kFeatureSecureErase = VIRTIO_BLK_F_SECURE_ERASE;  // 16
inline constexpr unsigned kFeatureZoned = 17;        // VIRTIO_BLK_F_ZONED (not in Debian 12's UAPI)
inline constexpr unsigned kFeatureIce = 22;             // VIRTIO_BLK_F_ICE (spec §1)
inline constexpr unsigned kFeatureIceInbandKeys = 23;   // VIRTIO_BLK_F_ICE_INBAND_KEYS (spec §1)
inline constexpr unsigned kFeatureSizeMax = VIRTIO_BLK_F_SIZE_MAX;        // 1
inline constexpr unsigned kFeatureGeometry = VIRTIO_BLK_F_GEOMETRY;       // 4
// Transport bits, defined in virtio/features.h:
using virtio::kFeatureEventIdx;
using virtio::kFeatureIndirectDesc;
using virtio::kFeatureVersion1;
using virtio::kFeatureVhostUserProtocol;
using virtio::feature_bit;
using virtio::has_feature;

// "VERSION_1 FLUSH ICE ..." for the set bits (unknown ones as "bit<n>").
std::string feature_names(uint64_t features);

// --- request types (spec §4) ----------------------------------------------------
inline constexpr uint32_t kTypeIn = VIRTIO_BLK_T_IN;                    // 0
inline constexpr uint32_t kTypeOut = VIRTIO_BLK_T_OUT;                  // 1
inline constexpr uint32_t kTypeFlush = VIRTIO_BLK_T_FLUSH;              // 4
inline constexpr uint32_t kTypeGetId = VIRTIO_BLK_T_GET_ID;             // 8
inline constexpr uint32_t kTypeDiscard = VIRTIO_BLK_T_DISCARD;          // 11
inline constexpr uint32_t kTypeWriteZeroes = VIRTIO_BLK_T_WRITE_ZEROES;  // 13
inline constexpr uint32_t kTypeGetCryptoCaps = 28;  // VIRTIO_BLK_T_GET_CRYPTO_CAPABILITIES
inline constexpr uint32_t kTypeIceProgramKey = 29;  // VIRTIO_BLK_T_ICE_PROGRAM_KEY
inline constexpr uint32_t kTypeIceEvictKey = 31;    // VIRTIO_BLK_T_ICE_EVICT_KEY

// --- status byte ---------------------------------------------------------------
inline constexpr uint8_t kStatusOk = VIRTIO_BLK_S_OK;          // 0
inline constexpr uint8_t kStatusIoErr = VIRTIO_BLK_S_IOERR;    // 1
inline constexpr uint8_t kStatusUnsupp = VIRTIO_BLK_S_UNSUPP;  // 2

inline constexpr uint32_t kIdBytes = VIRTIO_BLK_ID_BYTES;  // 20
inline constexpr uint32_t kWriteZeroesFlagUnmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

// --- request header (spec §3) ---------------------------------------------------
struct OutHdr {
  le32 type;
  le32 reserved;  // "ioprio" in Linux; ignored
  le64 sector;
};
static_assert(sizeof(OutHdr) == 16);
static_assert(offsetof(OutHdr, type) == 0 && offsetof(OutHdr, reserved) == 4 && offsetof(OutHdr, sector) == 8);

struct IcePayload {
  uint8_t slot;
  uint8_t activate;
  le16 reserved1;
  le32 reserved2;
  le64 data_unit_num;
};
static_assert(sizeof(IcePayload) == 16);
static_assert(offsetof(IcePayload, slot) == 0 && offsetof(IcePayload, activate) == 1 &&
              offsetof(IcePayload, reserved1) == 2 && offsetof(IcePayload, reserved2) == 4 &&
              offsetof(IcePayload, data_unit_num) == 8);

// The 32-byte header used when VIRTIO_BLK_F_ICE is negotiated.
struct IceHdr {
  OutHdr out;
  IcePayload ice;
};
static_assert(sizeof(IceHdr) == 32 && offsetof(IceHdr, ice) == 16);

inline constexpr uint32_t kPlainHeaderSize = sizeof(OutHdr);
inline constexpr uint32_t kIceHeaderSize = sizeof(IceHdr);

// Driver side: the request header bytes, 16 (plain) or 32 (ICE) of them. `size` must
// be kPlainHeaderSize or kIceHeaderSize; the ICE fields are dropped for 16.
inline std::vector<uint8_t> encode_header(uint32_t size, uint32_t type, uint64_t sector, uint8_t slot = 0,
                                          uint8_t activate = 0, uint64_t dun = 0, uint16_t reserved1 = 0,
                                          uint32_t reserved2 = 0) {
  IceHdr h{};
  h.out.type = type;
  h.out.sector = sector;
  h.ice.slot = slot;
  h.ice.activate = activate;
  h.ice.reserved1 = reserved1;
  h.ice.reserved2 = reserved2;
  h.ice.data_unit_num = dun;
  std::vector<uint8_t> v(size <= kPlainHeaderSize ? kPlainHeaderSize : kIceHeaderSize);
  std::memcpy(v.data(), &h, v.size());
  return v;
}

// --- DISCARD / WRITE_ZEROES segment (VIRTIO 1.3 §5.2.6) -------------------------
struct DiscardWriteZeroes {
  le64 sector;
  le32 num_sectors;
  le32 flags;
};
static_assert(sizeof(DiscardWriteZeroes) == 16);
static_assert(offsetof(DiscardWriteZeroes, num_sectors) == 8 && offsetof(DiscardWriteZeroes, flags) == 12);

// --- GET_CRYPTO_CAPABILITIES entry (spec §4.1) ----------------------------------
struct CryptoCap {
  uint8_t alg;
  uint8_t data_unit_size_exp;
  uint8_t key_size;
  uint8_t reserved;
};
static_assert(sizeof(CryptoCap) == 4);

// The GET_CRYPTO_CAPABILITIES payload: the device encodes, the driver decodes. Values
// are not validated on decode (the driver reports what the device says).
std::vector<uint8_t> encode_capabilities(std::span<const ice::Capability> caps);
std::vector<ice::Capability> decode_capabilities(std::span<const uint8_t> bytes);

// --- PROGRAM_KEY blob (spec §6) -------------------------------------------------
// struct virtio_blk_ice_key is ice::KeyBlobWire (ice/key_blob.h), shared with the
// secure world's SET_KEY.

// --- configuration space (VIRTIO 1.3 §5.2.4 + spec §2) --------------------------
struct BlkGeometry {
  le16 cylinders;
  uint8_t heads;
  uint8_t sectors;
};

struct BlkZoned {
  le32 zone_sectors;
  le32 max_open_zones;
  le32 max_active_zones;
  le32 max_append_sectors;
  le32 write_granularity;
  uint8_t model;
  uint8_t unused2[3];
};
static_assert(sizeof(BlkZoned) == 24);

struct BlkConfig {
  le64 capacity;  // 512-byte sectors
  le32 size_max;
  le32 seg_max;
  BlkGeometry geometry;
  le32 blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  le16 min_io_size;
  le32 opt_io_size;
  uint8_t writeback;
  uint8_t unused0;
  le16 num_queues;
  le32 max_discard_sectors;
  le32 max_discard_seg;
  le32 discard_sector_alignment;
  le32 max_write_zeroes_sectors;
  le32 max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
  le32 max_secure_erase_sectors;
  le32 max_secure_erase_seg;
  le32 secure_erase_sector_alignment;
  BlkZoned zoned;
  le16 slot_info;       // spec §2: bits 15:8 max_slots, bits 7:0 slot_offset
  le16 capability_num;  // spec §2
  le32
      key_generation;  // spec §2, proposed addition (docs/protocol.md): changes when keys were lost
};
// The wire size is 104 bytes (100 before key_generation).
inline constexpr uint32_t kConfigSize = 104;
inline constexpr uint32_t kConfigKeyGenerationOffset = 100;
static_assert(offsetof(BlkConfig, seg_max) == 12 && offsetof(BlkConfig, blk_size) == 20 &&
              offsetof(BlkConfig, physical_block_exp) == 24 && offsetof(BlkConfig, opt_io_size) == 28 &&
              offsetof(BlkConfig, writeback) == 32 && offsetof(BlkConfig, num_queues) == 34 &&
              offsetof(BlkConfig, max_discard_sectors) == 36 && offsetof(BlkConfig, max_write_zeroes_sectors) == 48 &&
              offsetof(BlkConfig, write_zeroes_may_unmap) == 56 && offsetof(BlkConfig, max_secure_erase_sectors) == 60 &&
              offsetof(BlkConfig, zoned) == 72 && offsetof(BlkConfig, slot_info) == 96 &&
              offsetof(BlkConfig, capability_num) == 98);
static_assert(offsetof(BlkConfig, key_generation) == kConfigKeyGenerationOffset);
static_assert(offsetof(BlkConfig, key_generation) + sizeof(le32) == kConfigSize);
static_assert(sizeof(BlkConfig) >= kConfigSize);
inline constexpr uint32_t kConfigWritebackOffset = offsetof(BlkConfig, writeback);

// Older devices expose fewer config bytes (100 without key_generation; QEMU's struct
// sizes: 96 with zoned, 72 with secure erase, 60 before); a driver tries these sizes
// in this order.
inline constexpr uint32_t kConfigSizes[] = {kConfigSize, 100, 96, 72, 60};

// slot_info (spec §2): bits 15:8 max_slots, bits 7:0 slot_offset.
struct SlotInfo {
  uint8_t max_slots = 0;
  uint8_t slot_offset = 0;
};
constexpr uint16_t encode_slot_info(SlotInfo s) { return static_cast<uint16_t>((s.max_slots << 8) | s.slot_offset); }
constexpr SlotInfo decode_slot_info(uint16_t v) {
  return {static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v & 0xff)};
}

// The first kConfigSize bytes of `c`: what the device exposes.
inline std::array<uint8_t, kConfigSize> encode_config(const BlkConfig& c) {
  std::array<uint8_t, kConfigSize> out{};
  std::memcpy(out.data(), &c, kConfigSize);
  return out;
}

// Config space bytes as read by a driver (kConfigSize or fewer; missing fields are
// zero). The device builds a BlkConfig and exposes its first kConfigSize bytes.
inline BlkConfig decode_config(std::span<const uint8_t> bytes) {
  BlkConfig c{};
  std::memcpy(&c, bytes.data(), std::min<size_t>(bytes.size(), kConfigSize));
  return c;
}

}  // namespace iceblk::blk
