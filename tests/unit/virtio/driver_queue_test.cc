// Driver-side memory allocator and ring (src/virtio/driver_queue.h).
#include "virtio/driver_queue.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>

#include "support/ring_harness.h"
#include "virtio/ring_layout.h"

namespace iceblk::virtio {
namespace {

TEST(DriverMemory, CreateAndPtr) {
  auto m = DriverMemory::create(1 << 16, 0x200000);
  ASSERT_TRUE(m) << m.error().to_string();
  auto& mem = **m;
  EXPECT_GE(mem.fd(), 0);
  EXPECT_EQ(mem.size(), 1u << 16);
  EXPECT_EQ(mem.guest_base(), 0x200000u);
  EXPECT_NE(mem.ptr(GuestAddr{0x200000}, 1 << 16), nullptr);
  EXPECT_EQ(mem.ptr(GuestAddr{0x200000}, (1 << 16) + 1), nullptr);
  EXPECT_EQ(mem.ptr(GuestAddr{0x1fffff}), nullptr);
  EXPECT_EQ(mem.ptr(GuestAddr{0x210000}), nullptr);
  const auto r = mem.region();
  EXPECT_EQ(r.guest_addr, 0x200000u);
  EXPECT_EQ(r.user_addr, 0x200000u);
  EXPECT_EQ(r.size, 1u << 16);
  EXPECT_EQ(r.host, mem.ptr(GuestAddr{0x200000}));
  EXPECT_FALSE(DriverMemory::create(0));
  EXPECT_EQ(DriverMemory::create(0x2000, ~uint64_t{0} - 0x1000).error().code, Errc::kOverflow);
}

TEST(DriverMemory, SharedWithSecondMapping) {
  auto m = DriverMemory::create(1 << 16);
  ASSERT_TRUE(m);
  auto gm = test::device_memory_for(**m);
  ASSERT_TRUE(gm);
  auto a = (*m)->alloc(16);
  ASSERT_TRUE(a);
  std::memcpy((*m)->ptr(*a, 4), "abcd", 4);
  char got[4];
  ASSERT_TRUE((*gm)->read(*a, {reinterpret_cast<uint8_t*>(got), 4}));
  EXPECT_EQ(std::memcmp(got, "abcd", 4), 0);
  EXPECT_NE((*gm)->regions()[0].host, (*m)->ptr(*a) - (a->value - (*m)->guest_base()));  // distinct mmap
}

TEST(DriverMemory, AllocAlignmentFirstFitAndCoalescing) {
  auto m = DriverMemory::create(4096, 0x100000);
  ASSERT_TRUE(m);
  auto& mem = **m;
  auto a = mem.alloc(10, 1);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->value, 0x100000u);  // first fit
  auto b = mem.alloc(100, 256);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->value % 256, 0u);
  EXPECT_EQ(b->value, 0x100100u);
  auto c = mem.alloc(20, 1);  // fits in the padding before b
  ASSERT_TRUE(c);
  EXPECT_EQ(c->value, 0x10000au);
  EXPECT_EQ(mem.alloc(4096, 1).error().code, Errc::kBusy);
  EXPECT_EQ(mem.alloc(0).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(mem.alloc(8, 3).error().code, Errc::kInvalidArgument);
  mem.free(*a);
  mem.free(*b);
  mem.free(*c);
  mem.free(GuestAddr{0x100001});  // not allocated: ignored
  // Everything coalesced back: the whole region is one block again.
  auto all = mem.alloc(4096, 1);
  ASSERT_TRUE(all);
  EXPECT_EQ(all->value, 0x100000u);
}

TEST(DriverMemory, ConcurrentAllocFreeNeverOverlaps) {
  auto m = DriverMemory::create(1 << 20);
  ASSERT_TRUE(m);
  auto& mem = **m;
  std::mutex mu;
  std::vector<std::pair<uint64_t, uint64_t>> live;
  bool overlap = false;
  auto worker = [&](unsigned seed) {
    std::vector<GuestAddr> mine;
    for (unsigned i = 0; i < 2000; ++i) {
      const uint64_t sz = 1 + (seed * 7919 + i * 104729) % 3000;
      auto a = mem.alloc(sz, uint64_t{1} << (i % 7));
      if (a) {
        std::lock_guard l(mu);
        for (auto& [s, n] : live) {
          if (a->value < s + n && s < a->value + sz) overlap = true;
        }
        live.emplace_back(a->value, sz);
        mine.push_back(*a);
      }
      if (mine.size() > 20 || (!a && !mine.empty())) {
        const GuestAddr f = mine.front();
        mine.erase(mine.begin());
        {
          std::lock_guard l(mu);
          live.erase(std::find_if(live.begin(), live.end(), [&](auto& p) { return p.first == f.value; }));
        }
        mem.free(f);
      }
    }
    for (auto f : mine) {
      {
        std::lock_guard l(mu);
        live.erase(std::find_if(live.begin(), live.end(), [&](auto& p) { return p.first == f.value; }));
      }
      mem.free(f);
    }
  };
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < 4; ++t) ts.emplace_back(worker, t + 1);
  for (auto& t : ts) t.join();
  EXPECT_FALSE(overlap);
  EXPECT_TRUE(mem.alloc(1 << 20, 1));  // all freed and coalesced
}

TEST(DriverQueue, CreateValidates) {
  auto m = DriverMemory::create(1 << 16);
  ASSERT_TRUE(m);
  EXPECT_EQ(DriverQueue::create(*m, 0, false).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(DriverQueue::create(*m, 6, false).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(DriverQueue::create(nullptr, 8, false).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(DriverQueue::create(*m, 32768, false).error().code, Errc::kBusy);  // 512 KiB table > 64 KiB
  auto q = DriverQueue::create(*m, 8, true, true);
  ASSERT_TRUE(q);
  const auto c = (*q)->device_config();
  EXPECT_EQ(c.size, 8);
  EXPECT_TRUE(c.event_idx);
  EXPECT_TRUE(c.indirect);
  EXPECT_EQ(c.desc.value % 16, 0u);
  EXPECT_EQ(c.avail.value % 2, 0u);
  EXPECT_EQ(c.used.value % 4, 0u);
  EXPECT_EQ((*q)->free_descriptors(), 8);
}

TEST(DriverQueue, DestroyReleasesRingMemory) {
  auto m = DriverMemory::create(1 << 16);
  ASSERT_TRUE(m);
  {
    auto q = DriverQueue::create(*m, 256, false, true);
    ASSERT_TRUE(q);
    auto a = (*m)->alloc(8);
    ASSERT_TRUE(a);
    ASSERT_TRUE((*q)->add(std::vector<Buffer>{{*a, 8, false}, {*a, 8, true}}, true));  // table in flight
    (*m)->free(*a);
  }
  EXPECT_TRUE((*m)->alloc(1 << 16, 1));
}

TEST(DriverQueue, AddValidates) {
  test::RingOptions o;
  o.size = 4;
  auto h = test::RingHarness::create(o);
  ASSERT_TRUE(h);
  auto& q = (*h)->driver();
  const Buffer b{GuestAddr{(*h)->mem().guest_base()}, 8, false};
  EXPECT_EQ(q.add({}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(q.add(std::vector<Buffer>(5, b)).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(q.add(std::vector<Buffer>{b}, true).error().code, Errc::kUnsupported);
  ASSERT_TRUE(q.add(std::vector<Buffer>(3, b)));
  EXPECT_EQ(q.add(std::vector<Buffer>(2, b)).error().code, Errc::kBusy);
  EXPECT_EQ(q.free_descriptors(), 1);
  ASSERT_TRUE(q.add(std::vector<Buffer>{b}));
  EXPECT_EQ(q.free_descriptors(), 0);
}

TEST(DriverQueue, IndirectTableBytesOnTheWire) {
  test::RingOptions o;
  o.indirect = true;
  auto h = test::RingHarness::create(o);
  ASSERT_TRUE(h);
  const std::vector<Buffer> bufs{{GuestAddr{0x100100}, 16, false}, {GuestAddr{0x100200}, 32, true}};
  auto head = (*h)->driver().add(bufs, true);
  ASSERT_TRUE(head);
  const auto c = (*h)->driver().device_config();
  virtio::VirtqDesc d;
  std::memcpy(&d, (*h)->mem().ptr(GuestAddr{c.desc.value + 16 * *head}, 16), 16);
  EXPECT_EQ(d.flags.get(), virtio::kDescFIndirect);
  EXPECT_EQ(d.len.get(), 32u);
  virtio::VirtqDesc t[2];
  std::memcpy(t, (*h)->mem().ptr(GuestAddr{d.addr.get()}, 32), 32);
  EXPECT_EQ(t[0].addr.get(), 0x100100u);
  EXPECT_EQ(t[0].flags.get(), virtio::kDescFNext);
  EXPECT_EQ(t[0].next.get(), 1);
  EXPECT_EQ(t[1].flags.get(), virtio::kDescFWrite);
  EXPECT_EQ(t[1].len.get(), 32u);
}

TEST(DriverQueue, UntrustedUsedHeadDoesNotCorruptFreeList) {
  test::RingOptions o;
  o.size = 4;
  auto h = test::RingHarness::create(o);
  ASSERT_TRUE(h);
  auto& q = (*h)->driver();
  auto& dev = (*h)->device();
  const Buffer b{GuestAddr{(*h)->mem().guest_base()}, 8, false};
  auto head = q.add(std::vector<Buffer>{b, b});
  ASSERT_TRUE(head);
  q.publish();
  // A buggy device completes a head that is not in flight, and the real one twice.
  const uint16_t other = static_cast<uint16_t>((*head + 3) % 4);
  ASSERT_TRUE(dev.push_used(other, 0));
  ASSERT_TRUE(dev.push_used(*head, 0));
  ASSERT_TRUE(dev.push_used(*head, 0));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(q.get_used());
  EXPECT_FALSE(q.get_used());
  EXPECT_EQ(q.free_descriptors(), 4);
}

}  // namespace
}  // namespace iceblk::virtio
