#include "iceblk/keyslot_manager.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace iceblk::driver {
namespace {

using std::chrono::milliseconds;

ice::Key make_key(uint8_t seed) {
  std::vector<uint8_t> bytes(64);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(seed * 31 + i);
  auto k = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, bytes);
  EXPECT_TRUE(k) << k.error().to_string();
  return std::move(*k);
}

// Records what the "device" holds in each slot: the first key byte, or -1.
struct FakeDevice {
  std::mutex mu;
  std::vector<int> slot_seed;
  std::vector<std::string> log;
  bool fail_next_program = false;
  explicit FakeDevice(uint32_t n) : slot_seed(n, -1) {}
  KeyslotManager::ProgramFn program() {
    return [this](uint32_t slot, const ice::Key& key) -> Status {
      std::lock_guard lk(mu);
      if (fail_next_program) {
        fail_next_program = false;
        return fail(Errc::kIo, "device said no");
      }
      slot_seed[slot] = key.material()[0];
      log.push_back("program " + std::to_string(slot));
      return {};
    };
  }
  KeyslotManager::EvictFn evict() {
    return [this](uint32_t slot) -> Status {
      std::lock_guard lk(mu);
      slot_seed[slot] = -1;
      log.push_back("evict " + std::to_string(slot));
      return {};
    };
  }
};

TEST(KeyslotManager, ProgramsOnFirstAcquireAndReusesTheSlot) {
  FakeDevice dev(2);
  KeyslotManager m(2, dev.program(), dev.evict());
  ASSERT_TRUE(m.add_key("a", make_key(1)));
  auto l1 = m.acquire("a");
  ASSERT_TRUE(l1);
  const uint32_t slot = l1->slot();
  l1->release();
  auto l2 = m.acquire("a");
  ASSERT_TRUE(l2);
  EXPECT_EQ(l2->slot(), slot);
  EXPECT_EQ(m.programs_done(), 1u);
  EXPECT_EQ(dev.slot_seed[slot], make_key(1).material()[0]);
}

TEST(KeyslotManager, MoreKeysThanSlotsEvictsLeastRecentlyUsedIdleSlot) {
  FakeDevice dev(2);
  KeyslotManager m(2, dev.program(), dev.evict());
  for (uint8_t i = 0; i < 3; ++i) ASSERT_TRUE(m.add_key("k" + std::to_string(i), make_key(i)));
  uint32_t slot0, slot1;
  {
    auto a = m.acquire("k0");
    auto b = m.acquire("k1");
    ASSERT_TRUE(a && b);
    slot0 = a->slot();
    slot1 = b->slot();
    EXPECT_NE(slot0, slot1);
  }
  // Touch k0 again so k1 becomes least recently used.
  ASSERT_TRUE(m.acquire("k0"));
  auto c = m.acquire("k2");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->slot(), slot1);
  EXPECT_EQ(m.slot_owner(slot1), "k2");
  EXPECT_EQ(m.slot_owner(slot0), "k0");
  EXPECT_EQ(dev.slot_seed[slot1], make_key(2).material()[0]);
  // k1 lost its slot: acquiring it again programs it again (into k0's idle slot).
  c->release();
  auto again = m.acquire("k1");
  ASSERT_TRUE(again);
  EXPECT_EQ(m.programs_done(), 4u);
}

TEST(KeyslotManager, AllSlotsBusyFailsAfterTimeoutAndWaitsForRelease) {
  FakeDevice dev(1);
  KeyslotManager m(1, dev.program(), dev.evict());
  ASSERT_TRUE(m.add_key("a", make_key(1)));
  ASSERT_TRUE(m.add_key("b", make_key(2)));
  auto held = m.acquire("a");
  ASSERT_TRUE(held);
  auto busy = m.acquire("b", milliseconds(20));
  ASSERT_FALSE(busy);
  EXPECT_EQ(busy.error().code, Errc::kBusy);

  std::thread releaser([&] {
    std::this_thread::sleep_for(milliseconds(30));
    held->release();
  });
  auto waited = m.acquire("b", milliseconds(5000));
  releaser.join();
  ASSERT_TRUE(waited) << waited.error().to_string();
  EXPECT_EQ(m.slot_owner(0), "b");
}

TEST(KeyslotManager, RemoveKeyRefusesWhileLeasedAndEvictsWhenIdle) {
  FakeDevice dev(2);
  KeyslotManager m(2, dev.program(), dev.evict());
  ASSERT_TRUE(m.add_key("a", make_key(1)));
  auto l = m.acquire("a");
  ASSERT_TRUE(l);
  const uint32_t slot = l->slot();
  auto r = m.remove_key("a");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kBusy);
  l->release();
  ASSERT_TRUE(m.remove_key("a"));
  EXPECT_EQ(dev.slot_seed[slot], -1);
  EXPECT_FALSE(m.has_key("a"));
  EXPECT_EQ(m.acquire("a").error().code, Errc::kNotFound);
  EXPECT_EQ(m.remove_key("a").error().code, Errc::kNotFound);
}

TEST(KeyslotManager, ProgramFailureIsReturnedAndSlotStaysFree) {
  FakeDevice dev(1);
  KeyslotManager m(1, dev.program(), dev.evict());
  ASSERT_TRUE(m.add_key("a", make_key(1)));
  dev.fail_next_program = true;
  auto r = m.acquire("a");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kIo);
  EXPECT_EQ(m.slot_owner(0), std::nullopt);
  EXPECT_TRUE(m.acquire("a"));
}

TEST(KeyslotManager, ReprogramAllRestoresKeysAfterDeviceReset) {
  FakeDevice dev(3);
  KeyslotManager m(3, dev.program(), dev.evict());
  for (uint8_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(m.add_key("k" + std::to_string(i), make_key(i)));
    ASSERT_TRUE(m.acquire("k" + std::to_string(i)));
  }
  std::vector<int> before = dev.slot_seed;
  std::fill(dev.slot_seed.begin(), dev.slot_seed.end(), -1);  // the device reset
  ASSERT_TRUE(m.reprogram_all());
  EXPECT_EQ(dev.slot_seed, before);
}

TEST(KeyslotManager, ConcurrentUsersNeverShareASlotBetweenDifferentKeys) {
  constexpr uint32_t kSlots = 3;
  FakeDevice dev(kSlots);
  KeyslotManager m(kSlots, dev.program(), dev.evict());
  constexpr int kKeys = 6;
  for (int i = 0; i < kKeys; ++i) ASSERT_TRUE(m.add_key("k" + std::to_string(i), make_key(uint8_t(i))));
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < 300; ++n) {
        const int k = (t * 7 + n) % kKeys;
        auto l = m.acquire("k" + std::to_string(k), milliseconds(2000));
        if (!l) {
          ++errors;
          continue;
        }
        // While leased, the device slot must hold exactly this key.
        std::lock_guard lk(dev.mu);
        if (dev.slot_seed[l->slot()] != make_key(uint8_t(k)).material()[0]) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
}

}  // namespace
}  // namespace iceblk::driver
