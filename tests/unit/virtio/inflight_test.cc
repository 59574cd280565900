// Inflight I/O tracking (virtio/inflight.h) on a real split ring: heads are marked at
// pop and cleared at completion; a queue restarted over a region a "crashed" device
// left behind resubmits exactly the unfinished heads, oldest first, and continues
// the avail ring after them; a crash between publishing a completion and clearing
// its flag is repaired; a region the front-end scribbled on is refused.
#include "virtio/inflight.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "support/ring_harness.h"
#include "virtio/ring_layout.h"
#include "virtio/split_queue.h"

namespace iceblk::virtio {
namespace {

using test::RingHarness;

constexpr uint16_t kSize = 8;

struct Region {
  std::shared_ptr<std::vector<uint64_t>> words =
      std::make_shared<std::vector<uint64_t>>(inflight_queue_bytes(kSize) / 8, 0);
  uint8_t* data() const { return reinterpret_cast<uint8_t*>(words->data()); }
  InflightQueue tracker() const { return InflightQueue(data(), kSize, words); }
  InflightQueueHeader& header() const { return *reinterpret_cast<InflightQueueHeader*>(data()); }
  InflightDescState& desc(uint16_t i) const {
    return reinterpret_cast<InflightDescState*>(data() + sizeof(InflightQueueHeader))[i];
  }
};

std::unique_ptr<RingHarness> harness() {
  test::RingOptions o;
  o.size = kSize;
  auto h = RingHarness::create(o);
  EXPECT_TRUE(h) << h.error().to_string();
  return h ? std::move(*h) : nullptr;
}

// One readable buffer per chain; the driver's "request id" is its first byte.
uint16_t add(RingHarness& h, uint8_t id) {
  auto a = h.alloc(1, id);
  EXPECT_TRUE(a);
  Buffer b{*a, 1, false};
  auto head = h.driver().add(std::span<const Buffer>(&b, 1));
  EXPECT_TRUE(head) << head.error().to_string();
  h.driver().publish();
  return *head;
}

uint16_t pop_head(SplitQueue& q) {
  auto r = q.pop();
  EXPECT_TRUE(r && r->has_value());
  if (!r || !r->has_value()) return 0xffff;
  auto* c = std::get_if<DescriptorChain>(&**r);
  EXPECT_NE(c, nullptr);
  return c ? c->head : uint16_t{0xffff};
}

uint16_t used_idx(RingHarness& h) {
  uint16_t v;
  std::memcpy(&v, h.mem().ptr(h.driver().device_config().used, 4) + kRingIdxOff, 2);
  return v;
}

Result<SplitQueue> restart(RingHarness& h, uint16_t base) {
  return SplitQueue::activate(h.driver().device_config(), h.guest(), base);
}

TEST(InflightLayout, MatchesTheVhostUserSplitLayout) {
  EXPECT_EQ(inflight_queue_bytes(1), 64u);      // 16 + 16, rounded to 64
  EXPECT_EQ(inflight_queue_bytes(128), 2112u);  // 16 + 2048 -> 2112
  EXPECT_EQ(inflight_queue_bytes(256) % kInflightAlign, 0u);
}

TEST(Inflight, FreshRegionIsInitialisedAndTracksHeads) {
  auto h = harness();
  Region r;
  r.header().version = 0;
  auto q = SplitQueue::activate(h->driver().device_config(), h->guest());
  ASSERT_TRUE(q);
  auto n = q->attach_inflight(r.tracker());
  ASSERT_TRUE(n) << n.error().to_string();
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(r.header().version, kInflightVersion);
  EXPECT_EQ(r.header().desc_num, kSize);
  const uint16_t a = add(*h, 1), b = add(*h, 2);
  EXPECT_EQ(pop_head(*q), a);
  EXPECT_EQ(pop_head(*q), b);
  EXPECT_EQ(r.desc(a).inflight, 1);
  EXPECT_EQ(r.desc(b).inflight, 1);
  EXPECT_LT(r.desc(a).counter, r.desc(b).counter);
  ASSERT_TRUE(q->push_used(b, 0));  // out of order
  EXPECT_EQ(r.desc(b).inflight, 0);
  EXPECT_EQ(r.desc(a).inflight, 1);
  EXPECT_EQ(r.header().last_batch_head, b);
  EXPECT_EQ(r.header().used_idx, 1);
}

TEST(Inflight, RestartResubmitsUnfinishedHeadsOldestFirstThenContinues) {
  auto h = harness();
  Region r;
  {
    auto q = SplitQueue::activate(h->driver().device_config(), h->guest());
    ASSERT_TRUE(q && q->attach_inflight(r.tracker()));
    const uint16_t a = add(*h, 1), b = add(*h, 2), c = add(*h, 3);
    EXPECT_EQ(pop_head(*q), a);
    EXPECT_EQ(pop_head(*q), b);
    EXPECT_EQ(pop_head(*q), c);
    ASSERT_TRUE(q->push_used(b, 0));  // only b finished: a and c were in flight at the "crash"
    ASSERT_TRUE(h->driver().get_used());
  }
  const uint16_t d = add(*h, 4);  // queued while the device was away
  // The front-end restores next avail = used->idx = 1 (QEMU's fallback), which is
  // wrong here; the region corrects it.
  auto q = restart(*h, used_idx(*h));
  ASSERT_TRUE(q);
  auto n = q->attach_inflight(r.tracker());
  ASSERT_TRUE(n) << n.error().to_string();
  EXPECT_EQ(*n, 2u);
  std::vector<uint8_t> order;
  for (int i = 0; i < 3; ++i) {
    auto res = q->pop();
    ASSERT_TRUE(res && res->has_value());
    const auto& chain = std::get<DescriptorChain>(**res);
    order.push_back(h->bytes(chain.readable[0].addr, 1)[0]);
    ASSERT_TRUE(q->push_used(chain.head, 0));
  }
  EXPECT_EQ(order, (std::vector<uint8_t>{1, 3, 4}));  // a, c (counter order), then d
  EXPECT_EQ(q->next_avail(), 4);
  auto empty = q->pop();
  ASSERT_TRUE(empty);
  EXPECT_FALSE(empty->has_value());
  for (uint16_t i = 0; i < kSize; ++i) EXPECT_EQ(r.desc(i).inflight, 0) << i;
  (void)d;
}

TEST(Inflight, CrashBetweenPublishAndClearIsRepaired) {
  auto h = harness();
  Region r;
  uint16_t a = 0;
  {
    auto q = SplitQueue::activate(h->driver().device_config(), h->guest());
    ASSERT_TRUE(q && q->attach_inflight(r.tracker()));
    a = add(*h, 1);
    EXPECT_EQ(pop_head(*q), a);
    ASSERT_TRUE(q->push_used(a, 0));
  }
  // Undo the second half of the completion, as a crash right after the used->idx
  // store would have left it.
  r.desc(a).inflight = 1;
  r.header().used_idx = 0;
  auto q = restart(*h, 0);
  ASSERT_TRUE(q);
  auto n = q->attach_inflight(r.tracker());
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 0u) << "a completed request must not be redone";
  EXPECT_EQ(r.desc(a).inflight, 0);
  EXPECT_EQ(r.header().used_idx, 1);
  EXPECT_EQ(q->next_avail(), 1);
}

TEST(Inflight, ScribbledRegionIsRefused) {
  auto h = harness();
  auto attach = [&](const Region& r) {
    auto q = SplitQueue::activate(h->driver().device_config(), h->guest());
    EXPECT_TRUE(q);
    return q->attach_inflight(r.tracker());
  };
  auto init = [&] {
    Region r;
    EXPECT_TRUE(attach(r));  // initialises it
    return r;
  };
  {
    Region r = init();
    r.header().desc_num = kSize * 2;
    auto e = attach(r);
    ASSERT_FALSE(e);
    EXPECT_NE(e.error().message.find("describes 16 descriptors but the ring has 8"),
              std::string::npos);
  }
  {
    Region r = init();
    r.desc(3).inflight = 7;
    EXPECT_FALSE(attach(r));
  }
  {
    Region r = init();
    r.header().used_idx = 5;  // lags used->idx (0): last_batch_head is used
    r.header().last_batch_head = kSize;
    EXPECT_FALSE(attach(r));
  }
  {
    Region r = init();
    r.header().version = 9;
    EXPECT_FALSE(attach(r));
  }
}

}  // namespace
}  // namespace iceblk::virtio
