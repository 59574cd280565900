// The isolation matrix (issue 6, docs/threat-model.md): VM B, sharing one ICE engine
// with VM A inside one iceblkd, cannot touch A's keys, cannot use A's keys for I/O
// and cannot recover A's plaintext, in both key modes (in-band, bit 23, and the
// secure world of spec §7). Keys and reset (spec §8). Set-up: isolation_fixture.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <tuple>
#include <utility>
#include <vector>

#include "isolation/isolation_fixture.h"
#include "support/temp_dir.h"

namespace iceblk::isolation {
namespace {

class IsolationMatrix : public IsolationFixture, public ::testing::WithParamInterface<Mode> {
 protected:
  IsolationMatrix() : IsolationFixture(GetParam()) {}
};

// B's PROGRAM_KEY / SET_KEY and EVICT_KEY / INVALIDATE_KEY with every slot value
// 0..255 either lands in B's own range (exactly the slot it maps to, nothing else
// changes) or fails (in-band: IOERR, the virtual slot is never mapped outside B's
// range; secure world: DENIED) and changes nothing. A's key stays, bit for bit.
TEST_P(IsolationMatrix, OtherVmCannotProgramEvictOrReplaceAKey) {
  constexpr uint8_t kKeyA = 1;
  constexpr uint8_t kKeyB = 2;
  for (uint32_t v = 0; v < kVms[kA].count; ++v) ASSERT_TRUE(program(kA, wire_slot(kA, v), kKeyA));
  const Snapshot a_keys = snapshot();
  for (uint32_t p = kVms[kA].offset; p < kVms[kA].offset + kVms[kA].count; ++p) ASSERT_TRUE(holds(p, kKeyA));

  const Errc refused = in_band() ? Errc::kIo : Errc::kPermissionDenied;
  int landed = 0;
  for (uint32_t s = 0; s < 256; ++s) {
    SCOPED_TRACE(testing::Message() << "program slot " << s);
    const Snapshot before = snapshot();
    const Status st = program(kB, s, kKeyB);
    const Snapshot after = snapshot();
    if (auto t = target_of(kB, s)) {
      ASSERT_TRUE(st) << st.error().to_string();
      EXPECT_EQ(changed(before, after), std::vector<uint32_t>{*t});
      EXPECT_TRUE(holds(*t, kKeyB));
      ++landed;
    } else {
      ASSERT_FALSE(st);
      EXPECT_EQ(st.error().code, refused) << st.error().to_string();
      EXPECT_EQ(before, after);
    }
  }
  EXPECT_EQ(landed, static_cast<int>(kVms[kB].count));
  for (uint32_t s = 0; s < 256; ++s) {
    SCOPED_TRACE(testing::Message() << "evict slot " << s);
    const Snapshot before = snapshot();
    const Status st = evict(kB, s);
    const Snapshot after = snapshot();
    if (auto t = target_of(kB, s)) {
      ASSERT_TRUE(st) << st.error().to_string();
      EXPECT_EQ(changed(before, after), std::vector<uint32_t>{*t});
      EXPECT_FALSE(after[*t].has_value());
    } else {
      ASSERT_FALSE(st);
      EXPECT_EQ(st.error().code, refused) << st.error().to_string();
      EXPECT_EQ(before, after);
    }
  }
  // A's keys: same generation (never replaced) and same bytes.
  const Snapshot now = snapshot();
  for (uint32_t p = kVms[kA].offset; p < kVms[kA].offset + kVms[kA].count; ++p) {
    EXPECT_EQ(now[p], a_keys[p]) << "physical slot " << p;
    EXPECT_TRUE(holds(p, kKeyA)) << "physical slot " << p;
  }
}

// Out-of-band only: slot numbers a u8 cannot carry (the channel takes le32) are
// refused too, and the virtio device itself has no key path in this mode: B's
// PROGRAM_KEY / EVICT_KEY through the virtqueue get UNSUPP for every slot value.
// In-band only: the daemon runs no secure world, so there is no second path around
// the device's mapping.
TEST_P(IsolationMatrix, NoOtherKeyPathAroundTheChecks) {
  ASSERT_TRUE(program(kA, wire_slot(kA, 0), 1));
  const Snapshot before = snapshot();
  if (in_band()) {
    EXPECT_EQ(daemon_->secure_world(), nullptr);
    for (const auto& ec : daemon_->config().exports) EXPECT_TRUE(ec.secure_world_socket.empty());
    return;
  }
  for (uint32_t s : {256u, 0x1000u, 0x10000u, 0x7fffffffu, 0x80000000u, 0xffffff00u, 0xffffffffu}) {
    const Status st = sws_[kB]->set_key(PhysSlot(s), kMode, key_bytes(2));
    ASSERT_FALSE(st) << s;
    EXPECT_EQ(st.error().code, Errc::kPermissionDenied) << s;
    const Status ev = sws_[kB]->invalidate_key(PhysSlot(s));
    ASSERT_FALSE(ev) << s;
    EXPECT_EQ(ev.error().code, Errc::kPermissionDenied) << s;
  }
  EXPECT_EQ(dev(kB).program_key(0, key_for(2)).error().code, Errc::kUnsupported);
  std::array<uint8_t, ice::kKeyBlobSize> blob{};
  ASSERT_TRUE(ice::encode_key_blob(kMode, key_bytes(2), blob));
  for (uint32_t s = 0; s < 256; ++s) {
    driver::RawRequest p;
    p.header = ice_header(blk::kTypeIceProgramKey, 0, static_cast<uint8_t>(s));
    p.out = blob;
    p.secret = true;
    auto r = dev(kB).execute_raw(std::move(p));
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->status, blk::kStatusUnsupp) << "PROGRAM_KEY slot " << s;
    driver::RawRequest e;
    e.header = ice_header(blk::kTypeIceEvictKey, 0, static_cast<uint8_t>(s));
    r = dev(kB).execute_raw(std::move(e));
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->status, blk::kStatusUnsupp) << "EVICT_KEY slot " << s;
  }
  EXPECT_EQ(snapshot(), before);
  EXPECT_TRUE(holds(0, 1));
}

// B's encrypted I/O naming any slot value 0..255 other than its own programmed slot
// (A's physical slots in out-of-band mode, everything in in-band mode) fails with
// IOERR: a write stores nothing (B's image byte-identical), a read returns no data
// (used.len 1: only the status byte). Every slot of A and C holds a key, so the
// failures are range checks, not empty slots. B's own slot works and uses B's key,
// also for the value 0 that is A's physical slot number.
TEST_P(IsolationMatrix, IoNamingAnotherVmsSlotFailsAndWritesNothing) {
  for (size_t vm : {kA, kC}) {
    for (uint32_t v = 0; v < kVms[vm].count; ++v) ASSERT_TRUE(program(vm, wire_slot(vm, v), 10));
  }
  constexpr uint8_t kKeyB = 20;
  const uint32_t b_slot = wire_slot(kB, 0);
  ASSERT_TRUE(program(kB, b_slot, kKeyB));
  // B's image holds a known plain pattern at 0..64K.
  const auto fill = ice::test::pattern(65536, 7);
  ASSERT_TRUE(dev(kB).write(0, fill));
  ASSERT_TRUE(dev(kB).flush());
  const auto img_before = image(kB);
  ASSERT_TRUE(std::equal(fill.begin(), fill.end(), img_before.begin()));
  const Snapshot keys_before = snapshot();

  const auto data = ice::test::pattern(kDus, 8);
  std::vector<uint8_t> buf(kDus);
  int accepted = 0;
  for (uint32_t s = 0; s < 256; ++s) {
    SCOPED_TRACE(testing::Message() << "slot " << s);
    const uint8_t slot = static_cast<uint8_t>(s);
    if (s == b_slot) continue;
    const auto w = raw_write(kB, 8, data, slot, 1, 3);
    EXPECT_EQ(w.status, blk::kStatusIoErr);
    EXPECT_EQ(w.used_len, 1u);
    const Status lib = dev(kB).write(kDus, data, driver::Encryption{slot, 0});
    ASSERT_FALSE(lib);
    EXPECT_EQ(lib.error().code, Errc::kIo);
    std::fill(buf.begin(), buf.end(), 0xee);
    const auto r = raw_read(kB, 8, buf, slot, 1, 3);
    EXPECT_EQ(r.status, blk::kStatusIoErr);
    EXPECT_EQ(r.used_len, 1u);
    EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0; }))
        << "a failed IN returned data";
    if (s % 32 == 0) {
      ASSERT_EQ(image(kB), img_before);
    }
  }
  ASSERT_TRUE(dev(kB).flush());
  EXPECT_EQ(image(kB), img_before);
  EXPECT_EQ(snapshot(), keys_before);

  // B's own slot: accepted, and the medium holds B's ciphertext (not A's, even when
  // the slot value on the wire is A's physical slot number 0).
  const auto w = raw_write(kB, 64, data, static_cast<uint8_t>(b_slot), 1, 5);
  ASSERT_EQ(w.status, blk::kStatusOk);
  ++accepted;
  ASSERT_TRUE(dev(kB).flush());
  const auto img = image(kB);
  const std::vector<uint8_t> stored(img.begin() + 64 * 512, img.begin() + 64 * 512 + kDus);
  EXPECT_EQ(stored, local_crypt(kKeyB, ice::Direction::kEncrypt, 5, data));
  EXPECT_NE(stored, local_crypt(10, ice::Direction::kEncrypt, 5, data));
  EXPECT_EQ(accepted, 1);
}

// B cannot recover A's plaintext through any request it can form:
//  1. A's data is on A's image only as ciphertext (that A's key decrypts);
//  2. B's requests only address B's own image: every sector at or past B's capacity
//     fails, and B's reads return B's data;
//  3. the decryption oracle: B plants A's ciphertext (as if it got it from the host)
//     in its own image, fills every slot it can program with its own keys, and asks
//     the device to decrypt it with every slot value 0..255 at A's DUN: each either
//     fails (IOERR, no data) or yields B-key output, never A's plaintext.
TEST_P(IsolationMatrix, NoRequestRecoversAnotherVmsPlaintext) {
  constexpr uint8_t kKeyA = 31;
  constexpr uint64_t kOff = 8192;
  constexpr uint64_t kDun = 2;
  ASSERT_TRUE(program(kA, wire_slot(kA, 1), kKeyA));
  const auto secret = ice::test::pattern(kDus, 99);
  ASSERT_TRUE(dev(kA).write(kOff, secret, driver::Encryption{static_cast<uint8_t>(wire_slot(kA, 1)), kDun}));
  ASSERT_TRUE(dev(kA).flush());
  const auto img_a = image(kA);
  const std::vector<uint8_t> ct(img_a.begin() + kOff, img_a.begin() + kOff + kDus);
  ASSERT_NE(ct, secret);
  ASSERT_EQ(local_crypt(kKeyA, ice::Direction::kDecrypt, kDun, ct), secret);
  EXPECT_EQ(std::search(img_a.begin(), img_a.end(), secret.begin(), secret.end()), img_a.end())
      << "A's plaintext is on A's image";
  std::vector<uint8_t> back(kDus);
  ASSERT_TRUE(dev(kA).read(kOff, back, driver::Encryption{static_cast<uint8_t>(wire_slot(kA, 1)), kDun}));
  ASSERT_EQ(back, secret);

  // 2. B's address space is B's image.
  const uint64_t cap = dev(kB).config().capacity_sectors;
  ASSERT_EQ(cap * 512, kImageSize);
  std::vector<uint8_t> buf(kDus);
  for (uint64_t sector : {cap, cap - 1, cap + 1, cap * 2, uint64_t{1} << 54, (uint64_t{1} << 55) - 1,
                          UINT64_MAX / 512, UINT64_MAX - 7, UINT64_MAX}) {
    std::fill(buf.begin(), buf.end(), 0xee);
    const auto r = raw_read(kB, sector, buf, 0, 0, 0);
    EXPECT_EQ(r.status, blk::kStatusIoErr) << "sector " << sector;
    EXPECT_EQ(r.used_len, 1u) << "sector " << sector;
  }
  std::vector<uint8_t> b_all(kImageSize);
  ASSERT_TRUE(dev(kB).read(0, b_all));
  EXPECT_EQ(b_all, image(kB));
  EXPECT_EQ(std::search(b_all.begin(), b_all.end(), ct.begin(), ct.end()), b_all.end());

  // 3. The oracle. B's slots all hold B keys (seeds 40..47); A's ciphertext is on B's image.
  for (uint32_t v = 0; v < kVms[kB].count; ++v) {
    ASSERT_TRUE(program(kB, wire_slot(kB, v), static_cast<uint8_t>(40 + v)));
  }
  ASSERT_TRUE(dev(kB).write(kOff, ct));
  int decrypted = 0;
  for (uint32_t s = 0; s < 256; ++s) {
    SCOPED_TRACE(testing::Message() << "slot " << s);
    std::fill(buf.begin(), buf.end(), 0xee);
    const auto r = raw_read(kB, kOff / 512, buf, static_cast<uint8_t>(s), 1, kDun);
    EXPECT_NE(buf, secret);
    if (auto t = target_of(kB, s)) {
      ASSERT_EQ(r.status, blk::kStatusOk);
      const auto seed = static_cast<uint8_t>(40 + (*t - kVms[kB].offset));
      EXPECT_EQ(buf, local_crypt(seed, ice::Direction::kDecrypt, kDun, ct));
      ++decrypted;
    } else {
      EXPECT_EQ(r.status, blk::kStatusIoErr);
      EXPECT_EQ(r.used_len, 1u);
    }
  }
  EXPECT_EQ(decrypted, static_cast<int>(kVms[kB].count));
}

// Spec §8 with the driver library: A writes through a named key (keyslot manager).
// A device reset (RESET_DEVICE) and a reconnect evict in-band keys (the slot gets a
// new key generation: the driver reprogrammed it) and leave out-of-band keys alone
// (same generation, no reprogramming). Either way A reads its data back. A key
// programmed around the manager (C, raw) shows the eviction itself: after C's
// reset its in-band slot is empty and I/O on it fails; out of band it survives.
// Neither reset touches another VM's slots.
TEST_P(IsolationMatrix, ResetEvictsInBandKeysKeepsOutOfBandKeysDriverReprograms) {
  ASSERT_TRUE(dev(kA).add_key("a", kMode, key_bytes(50)));
  const auto data = ice::test::pattern(2 * kDus, 51);
  ASSERT_TRUE(dev(kA).write(0, data, driver::KeyRef{"a", 7}));
  auto* ksm = dev(kA).keyslots();
  ASSERT_NE(ksm, nullptr);
  std::optional<uint32_t> v;
  for (uint32_t i = 0; i < ksm->num_slots(); ++i) {
    if (ksm->slot_owner(i) == std::optional<std::string>("a")) v = i;
  }
  ASSERT_TRUE(v.has_value());
  const uint32_t phys = kVms[kA].offset + *v;
  ASSERT_TRUE(holds(phys, 50));

  ASSERT_TRUE(program(kB, wire_slot(kB, 0), 52));
  ASSERT_TRUE(program(kC, wire_slot(kC, 2), 53));
  const auto c_data = ice::test::pattern(kDus, 54);
  const uint8_t c_slot = static_cast<uint8_t>(wire_slot(kC, 2));
  ASSERT_TRUE(dev(kC).write(0, c_data, driver::Encryption{c_slot, 0}));

  auto not_a = [&](const Snapshot& s) {
    Snapshot o = s;
    for (uint32_t p = kVms[kA].offset; p < kVms[kA].offset + kVms[kA].count; ++p) o[p].reset();
    return o;
  };
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "reset" : "reconnect");
    const Snapshot before = snapshot();
    const uint64_t programs = ksm->programs_done();
    ASSERT_TRUE(round == 0 ? dev(kA).reset() : dev(kA).reconnect());
    const Snapshot after = snapshot();
    EXPECT_TRUE(holds(phys, 50));
    if (in_band()) {
      EXPECT_NE(after[phys], before[phys]) << "in-band key not evicted by the reset";
      EXPECT_EQ(ksm->programs_done(), programs + 1);
    } else {
      EXPECT_EQ(after[phys], before[phys]) << "out-of-band key did not survive the reset";
      EXPECT_EQ(ksm->programs_done(), programs);
    }
    EXPECT_EQ(not_a(after), not_a(before)) << "A's reset touched another VM's slots";
    std::vector<uint8_t> back(data.size());
    ASSERT_TRUE(dev(kA).read(0, back, driver::KeyRef{"a", 7}));
    EXPECT_EQ(back, data);
  }

  // C: a raw key (no keyslot manager to put it back).
  const Snapshot before = snapshot();
  ASSERT_TRUE(dev(kC).reset());
  const Snapshot after = snapshot();
  std::vector<uint8_t> back(kDus);
  const uint32_t c_phys = kVms[kC].offset + 2;
  if (in_band()) {
    EXPECT_EQ(changed(before, after), std::vector<uint32_t>{c_phys});
    EXPECT_FALSE(after[c_phys].has_value());
    const Status st = dev(kC).read(0, back, driver::Encryption{c_slot, 0});
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code, Errc::kIo);
  } else {
    EXPECT_EQ(after, before);
    ASSERT_TRUE(dev(kC).read(0, back, driver::Encryption{c_slot, 0}));
    EXPECT_EQ(back, c_data);
  }
}

// Mixed modes on one engine: A and C keep their keys in the secure world, B uses
// in-band keys. B's in-band PROGRAM/EVICT with every slot value and B's device
// resets stay in B's range; A's secure-world channel is DENIED on B's slots; B's
// I/O with any slot value never reaches A's key.
class MixedModes : public IsolationFixture {
 protected:
  MixedModes() : IsolationFixture({Mode::kOutOfBand, Mode::kInBand, Mode::kOutOfBand}) {}
};

TEST_F(MixedModes, InBandVmAndSecureWorldVmsStayApart) {
  for (uint32_t v = 0; v < kVms[kA].count; ++v) ASSERT_TRUE(program(kA, wire_slot(kA, v), 80));
  ASSERT_TRUE(program(kC, wire_slot(kC, 0), 81));
  const Snapshot others = snapshot();
  auto b_masked = [&](Snapshot s) {
    for (uint32_t p = kVms[kB].offset; p < kVms[kB].offset + kVms[kB].count; ++p) s[p].reset();
    return s;
  };
  for (uint32_t s = 0; s < 256; ++s) {
    SCOPED_TRACE(testing::Message() << "slot " << s);
    const Status st = program(kB, s, 82);
    EXPECT_EQ(st.has_value(), s < kVms[kB].count);
    if (st) {
      EXPECT_TRUE(holds(kVms[kB].offset + s, 82));
    } else {
      EXPECT_EQ(st.error().code, Errc::kIo);
    }
    const Status ev = evict(kB, s == 0 ? 255 : s);  // keep B's slot 0 for the I/O below
    EXPECT_EQ(ev.has_value(), s != 0 && s < kVms[kB].count);
  }
  EXPECT_EQ(b_masked(snapshot()), b_masked(others));
  // A's channel cannot reach B's in-band slots.
  for (uint32_t p = kVms[kB].offset; p < kVms[kB].offset + kVms[kB].count; ++p) {
    EXPECT_EQ(sws_[kA]->set_key(PhysSlot(p), kMode, key_bytes(83)).error().code, Errc::kPermissionDenied);
    EXPECT_EQ(sws_[kA]->invalidate_key(PhysSlot(p)).error().code, Errc::kPermissionDenied);
  }
  EXPECT_TRUE(holds(kVms[kB].offset, 82));
  // B's I/O: only its virtual slot 0 (its own key) works.
  const auto data = ice::test::pattern(kDus, 84);
  for (uint32_t s = 0; s < 256; ++s) {
    const auto w = raw_write(kB, 0, data, static_cast<uint8_t>(s), 1, 0);
    EXPECT_EQ(w.status, s == 0 ? blk::kStatusOk : blk::kStatusIoErr) << "slot " << s;
  }
  ASSERT_TRUE(dev(kB).flush());
  const auto img = image(kB);
  EXPECT_EQ(std::vector<uint8_t>(img.begin(), img.begin() + kDus), local_crypt(82, ice::Direction::kEncrypt, 0, data));
  // B's reset evicts B's in-band keys only; A's and C's secure-world keys stay.
  ASSERT_TRUE(dev(kB).reset());
  const Snapshot after = snapshot();
  for (uint32_t p = kVms[kB].offset; p < kVms[kB].offset + kVms[kB].count; ++p) EXPECT_FALSE(after[p].has_value());
  EXPECT_EQ(b_masked(after), b_masked(others));
}

// The host side of the contract (spec §2): ranges that overlap, or reach past the
// engine, are refused at start-up, naming the exports; nothing is left bound.
TEST(IsolationConfig, OverlappingOrOversizedRangesAreRefused) {
  const std::string dir = iceblk::test::make_temp_dir("iceblk-iso-cfg");
  ASSERT_FALSE(dir.empty());
  auto make = [&](uint32_t off_b, uint32_t count_b) {
    daemon::DaemonConfig cfg;
    cfg.num_slots = kNumSlots;
    for (const auto& [name, off, count] : {std::tuple{"vm-a", 0u, 8u}, std::tuple{"vm-b", off_b, count_b}}) {
      daemon::ExportConfig e;
      e.name = name;
      e.socket = dir + "/" + name + ".sock";
      e.image = dir + "/" + name + ".img";
      e.size = kImageSize;
      e.slot_offset = off;
      e.max_slots = count;
      cfg.exports.push_back(e);
    }
    return daemon::Daemon::create(cfg);
  };
  for (const auto& [off, count] : {std::pair{7u, 4u}, std::pair{0u, 1u}, std::pair{4u, 2u}}) {
    auto d = make(off, count);
    ASSERT_FALSE(d) << off << "+" << count;
    EXPECT_NE(d.error().message.find("vm-a"), std::string::npos) << d.error().message;
    EXPECT_NE(d.error().message.find("vm-b"), std::string::npos) << d.error().message;
    EXPECT_FALSE(std::filesystem::exists(dir + "/vm-a.sock"));
  }
  auto d = make(30, 4);  // [30, 34) past the engine's 32 slots
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, Errc::kOutOfRange);
  d = make(8, 4);  // adjacent: fine
  ASSERT_TRUE(d) << d.error().to_string();
  (*d)->shutdown();
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(BothKeyModes, IsolationMatrix, ::testing::Values(Mode::kInBand, Mode::kOutOfBand),
                         [](const ::testing::TestParamInfo<Mode>& i) { return std::string(mode_name(i.param)); });

}  // namespace
}  // namespace iceblk::isolation
