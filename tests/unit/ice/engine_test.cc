#include "ice/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "ice_test_util.h"

namespace iceblk::ice {
namespace {

using test::make_key;
using test::pattern;

const CryptoMode kXts256{Algorithm::kAesXts, KeySize::k256, 4096};

std::unique_ptr<Engine> make_engine(EngineConfig cfg = {}) {
  auto e = Engine::create(cfg);
  EXPECT_TRUE(e) << e.error().to_string();
  return std::move(*e);
}

TEST(EngineCreate, SlotCountLimits) {
  for (uint32_t n : {0u, 257u, 1000u}) {
    auto e = Engine::create({n, false});
    ASSERT_FALSE(e) << n;
    EXPECT_EQ(e.error().code, Errc::kInvalidArgument);
  }
  EXPECT_EQ(make_engine()->num_slots(), kDefaultNumSlots);
  auto big = make_engine({256, true});
  EXPECT_EQ(big->num_slots(), 256u);
  EXPECT_TRUE(big->allow_ecb());
  EXPECT_TRUE(big->program(PhysSlot(255), make_key(kXts256, uint8_t{1})));
}

TEST(EngineVms, RangesAreValidatedAndIsolated) {
  auto e = make_engine({64, false});
  auto a = e->add_vm("vm-a", {0, 16});
  ASSERT_TRUE(a);
  auto b = e->add_vm("vm-b", {16, 16});  // adjacent is fine
  ASSERT_TRUE(b);
  EXPECT_NE(*a, *b);
  EXPECT_EQ(e->vm_range(*b)->offset, 16u);
  EXPECT_EQ(e->vm_range(*b)->count, 16u);

  auto overlap = e->add_vm("vm-c", {10, 8});
  ASSERT_FALSE(overlap);
  EXPECT_EQ(overlap.error().code, Errc::kInvalidArgument);
  EXPECT_NE(overlap.error().message.find("vm-c"), std::string::npos);
  EXPECT_NE(overlap.error().message.find("vm-a"), std::string::npos);
  auto overlap_b = e->add_vm("vm-d", {31, 1});
  ASSERT_FALSE(overlap_b);
  EXPECT_NE(overlap_b.error().message.find("vm-b"), std::string::npos);

  EXPECT_EQ(e->add_vm("empty", {40, 0}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(make_engine({256, false})->add_vm("huge", {0, 256}).error().code,
            Errc::kInvalidArgument);
  EXPECT_EQ(e->add_vm("beyond", {60, 5}).error().code, Errc::kOutOfRange);
  EXPECT_EQ(e->add_vm("far", {0xffffffffu, 2}).error().code, Errc::kOutOfRange);
  EXPECT_TRUE(e->add_vm("tail", {60, 4}));
  EXPECT_EQ(e->vm_range(VmId(999)).error().code, Errc::kNotFound);
}

TEST(EngineVms, RemoveVmEvictsOnlyItsSlotsAndFreesTheRange) {
  auto e = make_engine();
  auto a = e->add_vm("vm-a", {0, 4});
  auto b = e->add_vm("vm-b", {4, 4});
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(e->program(PhysSlot(1), make_key(kXts256, uint8_t{1})));
  ASSERT_TRUE(e->program(PhysSlot(5), make_key(kXts256, uint8_t{2})));
  e->remove_vm(*a);
  EXPECT_EQ(e->lookup(PhysSlot(1)).error().code, Errc::kNotFound);
  EXPECT_TRUE(e->lookup(PhysSlot(5)));
  EXPECT_EQ(e->vm_range(*a).error().code, Errc::kNotFound);
  EXPECT_TRUE(e->add_vm("vm-a2", {0, 4}));
  e->remove_vm(VmId(12345));  // unknown: no effect
  EXPECT_TRUE(e->lookup(PhysSlot(5)));
}

TEST(EngineSlots, ProgramLookupEvict) {
  auto e = make_engine({8, false});
  EXPECT_EQ(e->lookup(PhysSlot(3)).error().code, Errc::kNotFound);
  ASSERT_TRUE(e->program(PhysSlot(3), make_key(kXts256, uint8_t{3})));
  auto k = e->lookup(PhysSlot(3));
  ASSERT_TRUE(k);
  EXPECT_EQ((*k)->key.mode(), kXts256);
  EXPECT_TRUE(e->evict(PhysSlot(3)));
  EXPECT_EQ(e->lookup(PhysSlot(3)).error().code, Errc::kNotFound);
  EXPECT_TRUE(e->evict(PhysSlot(3)));  // evicting an empty slot succeeds
}

TEST(EngineSlots, OutOfRangeSlots) {
  auto e = make_engine({8, false});
  CryptContext ctx;
  std::vector<uint8_t> buf(4096);
  for (uint32_t s : {8u, 9u, 255u, 256u, 0xffffffffu}) {
    EXPECT_EQ(e->program(PhysSlot(s), make_key(kXts256, uint8_t{1})).error().code,
              Errc::kOutOfRange);
    EXPECT_EQ(e->evict(PhysSlot(s)).error().code, Errc::kOutOfRange);
    EXPECT_EQ(e->lookup(PhysSlot(s)).error().code, Errc::kOutOfRange);
    EXPECT_EQ(e->crypt(ctx, PhysSlot(s), Direction::kEncrypt, Dun(0), buf).error().code,
              Errc::kOutOfRange);
  }
}

TEST(EngineSlots, CryptOnEmptySlotIsNotFoundAndLeavesBufferAlone) {
  auto e = make_engine();
  CryptContext ctx;
  std::vector<uint8_t> buf(4096, 0x77);
  auto st = e->crypt(ctx, PhysSlot(0), Direction::kEncrypt, Dun(0), buf);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kNotFound);
  EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0x77; }));
}

TEST(EngineSlots, EcbRefusedUnlessAllowed) {
  const CryptoMode ecb{Algorithm::kAesEcb, KeySize::k128, 512};
  auto strict = make_engine({8, false});
  auto st = strict->program(PhysSlot(0), make_key(ecb, uint8_t{4}));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kUnsupported);
  EXPECT_EQ(strict->lookup(PhysSlot(0)).error().code, Errc::kNotFound);
  auto lax = make_engine({8, true});
  EXPECT_TRUE(lax->program(PhysSlot(0), make_key(ecb, uint8_t{4})));
}

TEST(EngineSlots, EvictRangeClampsToTable) {
  auto e = make_engine({8, false});
  for (uint32_t s = 0; s < 8; ++s) ASSERT_TRUE(e->program(PhysSlot(s), make_key(kXts256, uint8_t{5})));
  e->evict_range({6, 200});
  e->evict_range({2, 1});
  for (uint32_t s = 0; s < 8; ++s) {
    EXPECT_EQ(e->lookup(PhysSlot(s)).has_value(), s != 2 && s < 6) << s;
  }
}

TEST(EngineSlots, LookupIsASnapshotAcrossReprogramAndEvict) {
  auto e = make_engine();
  ASSERT_TRUE(e->program(PhysSlot(1), make_key(kXts256, uint8_t{6})));
  auto old = e->lookup(PhysSlot(1));
  ASSERT_TRUE(old);
  const auto pt = pattern(4096, 7);
  auto expect_old = pt;
  CryptContext ctx;
  ASSERT_TRUE(ctx.crypt(**old, Direction::kEncrypt, Dun(3), expect_old));

  ASSERT_TRUE(e->program(PhysSlot(1), make_key(kXts256, uint8_t{7})));
  auto now = e->lookup(PhysSlot(1));
  ASSERT_TRUE(now);
  EXPECT_NE((*now)->generation, (*old)->generation);
  auto with_new = pt;
  ASSERT_TRUE(e->crypt(ctx, PhysSlot(1), Direction::kEncrypt, Dun(3), with_new));
  EXPECT_NE(with_new, expect_old);

  ASSERT_TRUE(e->evict(PhysSlot(1)));
  auto with_old = pt;  // the in-flight request keeps the key it started with
  ASSERT_TRUE(ctx.crypt(**old, Direction::kEncrypt, Dun(3), with_old));
  EXPECT_EQ(with_old, expect_old);
}

TEST(EngineConcurrency, CryptOnOneSlotWhileAnotherIsReprogrammed) {
  auto e = make_engine();
  ASSERT_TRUE(e->program(PhysSlot(0), make_key(kXts256, uint8_t{10})));
  const CryptoMode essiv{Algorithm::kEssivAesCbc, KeySize::k128, 512};
  const auto pt = pattern(16384, 11);
  // Expected ciphertexts, computed up front on a private context.
  auto expect_a = pt;
  CryptContext setup;
  ASSERT_TRUE(e->crypt(setup, PhysSlot(0), Direction::kEncrypt, Dun(100), expect_a));
  std::vector<uint8_t> expect_b[2];
  for (int i = 0; i < 2; ++i) {
    ProgrammedKey pk(make_key(essiv, static_cast<uint8_t>(20 + i)), 0);
    expect_b[i] = pt;
    ASSERT_TRUE(setup.crypt(pk, Direction::kEncrypt, Dun(5), expect_b[i]));
  }
  ASSERT_TRUE(e->program(PhysSlot(1), make_key(essiv, uint8_t{20})));

  std::atomic<bool> stop{false};
  std::atomic<int> bad_a{0}, bad_b{0}, errors{0};
  std::atomic<uint64_t> rounds_a{0};
  auto worker_a = [&] {
    CryptContext ctx;
    while (!stop.load()) {
      auto buf = pt;
      if (!e->crypt(ctx, PhysSlot(0), Direction::kEncrypt, Dun(100), buf)) ++errors;
      if (buf != expect_a) ++bad_a;
      if (!e->crypt(ctx, PhysSlot(0), Direction::kDecrypt, Dun(100), buf)) ++errors;
      if (buf != pt) ++bad_a;
      ++rounds_a;
    }
  };
  auto worker_b = [&] {  // uses slot B while it flips: must see one key or the other
    CryptContext ctx;
    while (!stop.load()) {
      auto buf = pt;
      auto st = e->crypt(ctx, PhysSlot(1), Direction::kEncrypt, Dun(5), buf);
      if (!st) {
        if (st.error().code != Errc::kNotFound) ++errors;  // evicted between programs
        continue;
      }
      if (buf != expect_b[0] && buf != expect_b[1]) ++bad_b;
    }
  };
  std::thread ta1(worker_a), ta2(worker_a), tb(worker_b);
  for (int i = 0; i < 400; ++i) {
    EXPECT_TRUE(e->program(PhysSlot(1), make_key(essiv, static_cast<uint8_t>(20 + (i & 1)))));
    if (i % 50 == 0) {
      EXPECT_TRUE(e->evict(PhysSlot(1)));
    }
  }
  while (rounds_a.load() < 20) std::this_thread::yield();
  stop = true;
  ta1.join();
  ta2.join();
  tb.join();
  EXPECT_EQ(bad_a.load(), 0);
  EXPECT_EQ(bad_b.load(), 0);
  EXPECT_EQ(errors.load(), 0);
}

}  // namespace
}  // namespace iceblk::ice
