// How keys reach a device's keyslots (spec §6 / §7): the one KeyMode, used by the
// device (blk::BlkDeviceConfig::key_mode, iceblkd's config) and the driver
// (driver::Device::key_mode()).
#pragma once

namespace iceblk {

enum class KeyMode {
  kNone,       // no ICE (driver: not negotiated; device: no key path)
  kInBand,     // bit 23: PROGRAM_KEY / EVICT_KEY through the virtqueue
  kOutOfBand,  // bit 22 only: keys through the secure world (spec §7)
};

inline const char* key_mode_name(KeyMode m) {
  switch (m) {
    case KeyMode::kNone: return "none";
    case KeyMode::kInBand: return "in-band";
    case KeyMode::kOutOfBand: return "out-of-band";
  }
  return "?";
}

}  // namespace iceblk
