// Shared set-up of the isolation matrix (docs/threat-model.md): one iceblkd (the
// Daemon library, in-process) with three exports ("VMs") on one ICE engine, each
// with its own image in a temp dir and its own physical slot range, each driven
// through its real vhost-user socket by the driver library (include/iceblk/) and,
// in out-of-band mode, through its own secure-world channel.
//
//   VM A  [0, 4)    the victim. Its physical slot numbers are also valid *virtual*
//                   slot numbers for B: the confusion the reviewer asked about.
//   VM B  [4, 12)   the attacker.
//   VM C  [12, 16)  a bystander (I/O while B misbehaves).
//   16..31          nobody's (the host's share of the engine).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "base/strong_types.h"
#include "blk/wire.h"
#include "daemon/daemon.h"
#include "iceblk/keyslot_manager.h"
#include "driver/secure_world_client.h"
#include "iceblk/device.h"
#include "ice/engine.h"
#include "ice/key.h"
#include "ice/key_blob.h"
#include "unit/ice/ice_test_util.h"
#include "support/temp_dir.h"

namespace iceblk::isolation {

enum class Mode { kInBand, kOutOfBand };

inline const char* mode_name(Mode m) { return m == Mode::kInBand ? "InBand" : "SecureWorld"; }
inline void PrintTo(Mode m, std::ostream* os) { *os << mode_name(m); }  // gtest failure messages

struct VmLayout {
  const char* name;
  uint32_t offset;
  uint32_t count;
};
inline constexpr std::array<VmLayout, 3> kVms{{{"vm-a", 0, 4}, {"vm-b", 4, 8}, {"vm-c", 12, 4}}};
inline constexpr size_t kA = 0;
inline constexpr size_t kB = 1;
inline constexpr size_t kC = 2;
inline constexpr uint32_t kNumSlots = 32;
inline constexpr uint64_t kImageSize = 1 << 20;
inline constexpr uint32_t kDus = 4096;
inline const ice::CryptoMode kMode{ice::Algorithm::kAesXts, ice::KeySize::k256, kDus};

// Key material for `seed` (64 bytes, XTS halves differ) and the Key made from it.
inline std::vector<uint8_t> key_bytes(uint8_t seed) { return ice::test::pattern(64, seed); }
inline ice::Key key_for(uint8_t seed) { return ice::test::make_key(kMode, key_bytes(seed)); }

// Encrypt/decrypt `data` locally (the reference the device must match).
inline std::vector<uint8_t> local_crypt(uint8_t key_seed, ice::Direction dir, uint64_t dun,
                                        std::vector<uint8_t> data) {
  ice::ProgrammedKey pk(key_for(key_seed), 0);
  ice::CryptContext ctx;
  auto st = ctx.crypt(pk, dir, Dun(dun), data);
  EXPECT_TRUE(st) << st.error().to_string();
  return data;
}

// Generation of every physical slot's key (nullopt = empty): which slots changed.
using Snapshot = std::vector<std::optional<uint64_t>>;

// 32-byte request header (bit 22 negotiated) for raw requests.
inline std::vector<uint8_t> ice_header(uint32_t type, uint64_t sector, uint8_t slot = 0, uint8_t activate = 0,
                                       uint64_t dun = 0) {
  blk::IceHdr h{};
  h.out.type = type;
  h.out.sector = sector;
  h.ice.slot = slot;
  h.ice.activate = activate;
  h.ice.data_unit_num = dun;
  std::vector<uint8_t> v(sizeof h);
  std::memcpy(v.data(), &h, sizeof h);
  return v;
}

class IsolationFixture : public ::testing::Test {
 protected:
  explicit IsolationFixture(Mode mode) : modes_{mode, mode, mode} {}
  // One mode per VM (mixed: some exports in-band, others on the secure world).
  explicit IsolationFixture(std::array<Mode, 3> modes) : modes_(modes) {}

  void SetUp() override {
    dir_ = iceblk::test::make_temp_dir("iceblk-iso");
    ASSERT_FALSE(dir_.empty());
    daemon::DaemonConfig cfg;
    cfg.num_slots = kNumSlots;
    for (const VmLayout& v : kVms) {
      daemon::ExportConfig e;
      e.name = v.name;
      e.socket = dir_ + "/" + v.name + ".sock";
      e.image = dir_ + "/" + v.name + ".img";
      e.size = kImageSize;
      e.num_queues = 1;
      e.queue_size = 64;
      e.keys = modes_[cfg.exports.size()] == Mode::kInBand ? blk::KeyMode::kInBand : blk::KeyMode::kOutOfBand;
      e.slot_offset = v.offset;
      e.max_slots = v.count;
      e.algorithms = {{ice::Algorithm::kAesXts, ice::KeySize::k256}};
      cfg.exports.push_back(e);
    }
    auto d = daemon::Daemon::create(cfg);
    ASSERT_TRUE(d) << d.error().to_string();
    daemon_ = std::move(*d);
    ASSERT_TRUE(daemon_->start());
    for (size_t i = 0; i < kVms.size(); ++i) {
      const auto& ec = daemon_->config().exports[i];
      driver::ConnectOptions o;
      o.socket_path = ec.socket;
      o.memory_size = 8 << 20;
      o.queue_size = 64;
      if (!in_band(i)) o.secure_world_socket = ec.secure_world_socket;
      auto dev = driver::Device::connect(o);
      ASSERT_TRUE(dev) << dev.error().to_string();
      ASSERT_EQ((*dev)->key_mode(), in_band(i) ? driver::KeyMode::kInBand : driver::KeyMode::kOutOfBand);
      ASSERT_EQ((*dev)->config().slot_offset, kVms[i].offset);
      ASSERT_EQ((*dev)->config().max_slots, kVms[i].count);
      devs_.push_back(std::move(*dev));
      sws_.emplace_back();
      if (!in_band(i)) {
        auto c = driver::SecureWorldClient::connect(ec.secure_world_socket);
        ASSERT_TRUE(c) << c.error().to_string();
        sws_.back() = std::make_unique<driver::SecureWorldClient>(std::move(*c));
      }
    }
  }

  void TearDown() override {
    devs_.clear();
    sws_.clear();
    if (daemon_) daemon_->shutdown();
    daemon_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // VM A's mode (the parameterised tests run every VM in the same mode).
  [[nodiscard]] bool in_band() const { return in_band(kA); }
  [[nodiscard]] bool in_band(size_t vm) const { return modes_[vm] == Mode::kInBand; }
  ice::Engine& engine() { return daemon_->engine(); }
  driver::Device& dev(size_t vm) { return *devs_[vm]; }

  // The slot number VM `vm` puts on the wire for its own virtual slot `v`.
  [[nodiscard]] uint32_t wire_slot(size_t vm, uint32_t v) const { return in_band(vm) ? v : kVms[vm].offset + v; }

  // Where a slot number `s` sent by VM `vm` lands in the engine, if anywhere.
  [[nodiscard]] std::optional<uint32_t> target_of(size_t vm, uint32_t s) const {
    const VmLayout& l = kVms[vm];
    if (in_band(vm)) return s < l.count ? std::optional(l.offset + s) : std::nullopt;
    return s >= l.offset && s - l.offset < l.count ? std::optional(s) : std::nullopt;
  }

  // Program / evict as VM `vm` would in this mode: in-band PROGRAM_KEY / EVICT_KEY
  // through its virtqueue, or SET_KEY / INVALIDATE_KEY on its secure-world channel.
  Status program(size_t vm, uint32_t slot, uint8_t key_seed) {
    if (in_band(vm)) return devs_[vm]->program_key(static_cast<uint8_t>(slot), key_for(key_seed));
    const auto k = key_bytes(key_seed);
    return sws_[vm]->set_key(PhysSlot(slot), kMode, k);
  }
  Status evict(size_t vm, uint32_t slot) {
    if (in_band(vm)) return devs_[vm]->evict_key(static_cast<uint8_t>(slot));
    return sws_[vm]->invalidate_key(PhysSlot(slot));
  }

  Snapshot snapshot() {
    Snapshot s;
    for (uint32_t i = 0; i < kNumSlots; ++i) {
      auto k = engine().lookup(PhysSlot(i));
      s.push_back(k ? std::optional((*k)->generation) : std::nullopt);
    }
    return s;
  }
  // True when physical `slot` holds exactly the key of `key_seed`.
  bool holds(uint32_t slot, uint8_t key_seed) {
    auto k = engine().lookup(PhysSlot(slot));
    if (!k) return false;
    const auto want = key_bytes(key_seed);
    const auto got = (*k)->key.material();
    return (*k)->key.mode() == kMode && std::equal(got.begin(), got.end(), want.begin(), want.end());
  }
  // Indices of the physical slots whose content differs between two snapshots.
  static std::vector<uint32_t> changed(const Snapshot& a, const Snapshot& b) {
    std::vector<uint32_t> out;
    for (uint32_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) out.push_back(i);
    }
    return out;
  }

  // The image file of `vm` as it is on disk now.
  std::vector<uint8_t> image(size_t vm) {
    std::ifstream f(daemon_->config().exports[vm].image, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }

  // A raw encrypted (or plain) IN request; returns {status, used_len}.
  driver::RawResult raw_read(size_t vm, uint64_t sector, std::span<uint8_t> buf, uint8_t slot, uint8_t activate,
                             uint64_t dun) {
    driver::RawRequest r;
    r.header = ice_header(blk::kTypeIn, sector, slot, activate, dun);
    r.in = buf;
    auto res = devs_[vm]->execute_raw(std::move(r));
    EXPECT_TRUE(res) << res.error().to_string();
    return res ? *res : driver::RawResult{};
  }
  driver::RawResult raw_write(size_t vm, uint64_t sector, std::span<const uint8_t> buf, uint8_t slot,
                              uint8_t activate, uint64_t dun) {
    driver::RawRequest r;
    r.header = ice_header(blk::kTypeOut, sector, slot, activate, dun);
    r.out = buf;
    auto res = devs_[vm]->execute_raw(std::move(r));
    EXPECT_TRUE(res) << res.error().to_string();
    return res ? *res : driver::RawResult{};
  }

  std::array<Mode, 3> modes_;
  std::string dir_;
  std::unique_ptr<daemon::Daemon> daemon_;
  std::vector<std::unique_ptr<driver::Device>> devs_;
  std::vector<std::unique_ptr<driver::SecureWorldClient>> sws_;  // null for in-band VMs
};

}  // namespace iceblk::isolation
