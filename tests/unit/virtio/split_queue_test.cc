// Device-side split virtqueue against the driver-side ring (tests/support).
#include "virtio/split_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "support/ring_harness.h"
#include "virtio/ring_layout.h"

namespace iceblk::virtio {
namespace {

using virtio::Buffer;
using test::RingHarness;
using test::RingOptions;

std::unique_ptr<RingHarness> harness(const RingOptions& o = {}) {
  auto h = RingHarness::create(o);
  EXPECT_TRUE(h) << h.error().to_string();
  return h ? std::move(*h) : nullptr;
}

DescriptorChain pop_good(SplitQueue& q) {
  auto r = q.pop();
  EXPECT_TRUE(r) << r.error().to_string();
  if (!r || !r->has_value()) {
    ADD_FAILURE() << "ring empty";
    return {};
  }
  auto* c = std::get_if<DescriptorChain>(&**r);
  if (c == nullptr) {
    ADD_FAILURE() << "bad chain: " << std::get<BadChain>(**r).error.to_string();
    return {};
  }
  return std::move(*c);
}

bool ring_empty(SplitQueue& q) {
  auto r = q.pop();
  return r && !r->has_value();
}

TEST(SplitQueueActivate, RejectsBadSizes) {
  auto h = harness();
  QueueConfig c = h->driver().device_config();
  for (uint16_t s : {uint16_t{0}, uint16_t{3}, uint16_t{12}, uint16_t{65535}}) {
    c.size = s;
    auto q = SplitQueue::activate(c, h->guest());
    ASSERT_FALSE(q) << s;
    EXPECT_EQ(q.error().code, Errc::kInvalidArgument);
  }
  c.size = 1;
  EXPECT_TRUE(SplitQueue::activate(c, h->guest()));
  EXPECT_FALSE(SplitQueue::activate(h->driver().device_config(), nullptr));
}

TEST(SplitQueueActivate, RejectsMisalignedRings) {
  auto h = harness();
  const QueueConfig good = h->driver().device_config();
  QueueConfig c = good;
  c.desc = GuestAddr{good.desc.value + 8};
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kMisaligned);
  c = good;
  c.avail = GuestAddr{good.avail.value + 1};
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kMisaligned);
  c = good;
  c.used = GuestAddr{good.used.value + 2};
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kMisaligned);
}

TEST(SplitQueueActivate, RejectsRingsOutsideMemory) {
  RingOptions o;
  o.size = 16;
  auto h = harness(o);
  const QueueConfig good = h->driver().device_config();
  const uint64_t end = h->mem().guest_base() + h->mem().size();
  QueueConfig c = good;
  c.desc = GuestAddr{0};
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kOutOfRange);
  c = good;
  c.desc = GuestAddr{end - 16 * 8};  // table of 16 entries straddles the end
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kOutOfRange);
  c = good;
  c.avail = GuestAddr{end - 4};
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kOutOfRange);
  c = good;
  c.used = GuestAddr{end - 64};  // 4 + 8*16 bytes needed
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kOutOfRange);
  c = good;
  c.used = GuestAddr{0xfffffffffffffff0};
  EXPECT_FALSE(SplitQueue::activate(c, h->guest()));
  // Exactly fitting at the end of memory is fine (no EVENT_IDX: no avail_event).
  c = good;
  c.used = GuestAddr{end - used_avail_event_off(16)};
  EXPECT_TRUE(SplitQueue::activate(c, h->guest()));
  c.event_idx = true;  // now the 2-byte avail_event would be outside
  EXPECT_EQ(SplitQueue::activate(c, h->guest()).error().code, Errc::kOutOfRange);
}

TEST(SplitQueue, EmptyRingPopsNothing) {
  auto h = harness();
  EXPECT_TRUE(ring_empty(h->device()));
  // Added but not published: still invisible.
  ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{GuestAddr{h->mem().guest_base()}, 8, false}}));
  EXPECT_TRUE(ring_empty(h->device()));
  h->driver().publish();
  EXPECT_FALSE(ring_empty(h->device()));
}

TEST(SplitQueue, SimpleChainRoundTrip) {
  auto h = harness();
  const std::vector<uint8_t> out_bytes{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  auto in = h->alloc_bytes(out_bytes);
  auto data = h->alloc(512, 0);
  auto status = h->alloc(1, 0xff);
  ASSERT_TRUE(in && data && status);
  const std::vector<Buffer> bufs{{*in, 10, false}, {*data, 512, true}, {*status, 1, true}};
  auto head = h->driver().add(bufs);
  ASSERT_TRUE(head);
  EXPECT_EQ(h->driver().free_descriptors(), 16 - 3);
  h->driver().publish();

  DescriptorChain c = pop_good(h->device());
  EXPECT_EQ(c.head, *head);
  ASSERT_EQ(c.readable.size(), 1u);
  ASSERT_EQ(c.writable.size(), 2u);
  EXPECT_EQ(c.readable[0].addr, *in);
  EXPECT_EQ(c.readable[0].len, 10u);
  EXPECT_EQ(c.writable[0].addr, *data);
  EXPECT_EQ(c.writable[1].len, 1u);
  EXPECT_EQ(c.readable_len, 10u);
  EXPECT_EQ(c.writable_len, 513u);
  EXPECT_TRUE(ring_empty(h->device()));

  // Device reads the request and writes a response through its own mapping.
  const auto& gm = h->device().memory();
  std::vector<uint8_t> got(10);
  ASSERT_TRUE(gm.read(c.readable[0].addr, got));
  EXPECT_EQ(got, out_bytes);
  std::vector<uint8_t> resp(512, 0x5a);
  ASSERT_TRUE(gm.write(c.writable[0].addr, resp));
  ASSERT_TRUE(gm.write_obj(c.writable[1].addr, uint8_t{0}));
  ASSERT_TRUE(h->device().push_used(c.head, 513));

  EXPECT_TRUE(h->driver().has_used());
  auto u = h->driver().get_used();
  ASSERT_TRUE(u);
  EXPECT_EQ(u->head, *head);
  EXPECT_EQ(u->len, 513u);
  EXPECT_EQ(h->bytes(*data, 512)[511], 0x5a);
  EXPECT_EQ(h->bytes(*status, 1)[0], 0);
  EXPECT_EQ(h->driver().free_descriptors(), 16);
  EXPECT_FALSE(h->driver().get_used());
}

// One pass pops at most its budget; budget_spent() says chains were left, and only then.
TEST(SplitQueue, PassBudgetBoundsPopsAndSaysWhenChainsAreLeft) {
  auto h = harness();
  auto buf = h->alloc(8, 0);
  ASSERT_TRUE(buf);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{*buf, 8, true}}));
  h->driver().publish();
  SplitQueue& q = h->device();
  q.set_pass_budget(3);
  for (int i = 0; i < 3; ++i) pop_good(q);
  EXPECT_FALSE(q.budget_spent());  // nothing asked for beyond the budget yet
  auto r = q.pop();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_value());  // the budget ends the pass, with two chains left
  EXPECT_TRUE(q.budget_spent());
  EXPECT_TRUE(q.has_available());
  q.set_pass_budget(3);  // the next pass takes the rest
  EXPECT_FALSE(q.budget_spent());
  pop_good(q);
  pop_good(q);
  EXPECT_TRUE(ring_empty(q));
  // Exactly at the budget with the ring empty: nothing was left, so not spent.
  q.set_pass_budget(0);
  r = q.pop();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_value());
  EXPECT_FALSE(q.budget_spent());
}

TEST(SplitQueue, PushUsedRejectsBadHead) {
  auto h = harness();
  EXPECT_EQ(h->device().push_used(16, 0).error().code, Errc::kInvalidArgument);
}

TEST(SplitQueue, IndirectChain) {
  RingOptions o;
  o.indirect = true;
  auto h = harness(o);
  auto a = h->alloc(64, 1);
  auto b = h->alloc(4096, 2);
  auto s = h->alloc(1, 3);
  ASSERT_TRUE(a && b && s);
  const std::vector<Buffer> bufs{{*a, 64, false}, {*b, 4096, true}, {*s, 1, true}};
  auto head = h->driver().add(bufs, /*use_indirect=*/true);
  ASSERT_TRUE(head) << head.error().to_string();
  EXPECT_EQ(h->driver().free_descriptors(), 15);  // one ring descriptor
  h->driver().publish();
  DescriptorChain c = pop_good(h->device());
  EXPECT_EQ(c.head, *head);
  ASSERT_EQ(c.readable.size(), 1u);
  ASSERT_EQ(c.writable.size(), 2u);
  EXPECT_EQ(c.writable[0].addr, *b);
  EXPECT_EQ(c.writable_len, 4097u);
  ASSERT_TRUE(h->device().push_used(c.head, 1));
  auto u = h->driver().get_used();
  ASSERT_TRUE(u);
  EXPECT_EQ(u->head, *head);
  EXPECT_EQ(h->driver().free_descriptors(), 16);
}

TEST(SplitQueue, DirectDescriptorsThenIndirect) {
  // §2.7.5.3: a chain may have direct descriptors followed by one indirect one.
  RingOptions o;
  o.indirect = true;
  auto h = harness(o);
  auto a = h->alloc(32, 0);
  auto b = h->alloc(32, 0);
  ASSERT_TRUE(a && b);
  const RingHarness::RawDesc t[] = {{b->value, 32, kDescFWrite, 0}};
  auto table = h->write_indirect_table(t);
  ASSERT_TRUE(table);
  h->driver().write_raw_desc(0, a->value, 32, kDescFNext, 1);
  h->driver().write_raw_desc(1, table->value, 16, kDescFIndirect, 0);
  h->driver().push_raw_avail(0);
  h->driver().publish();
  DescriptorChain c = pop_good(h->device());
  ASSERT_EQ(c.readable.size(), 1u);
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].addr, *b);
}

TEST(SplitQueue, OutOfOrderCompletions) {
  auto h = harness();
  std::vector<uint16_t> heads;
  for (int i = 0; i < 3; ++i) {
    auto buf = h->alloc(16, static_cast<uint8_t>(i));
    ASSERT_TRUE(buf);
    const std::vector<Buffer> bufs{{*buf, 8, false}, {GuestAddr{buf->value + 8}, 8, true}};
    auto head = h->driver().add(bufs);
    ASSERT_TRUE(head);
    heads.push_back(*head);
  }
  h->driver().publish();
  std::vector<DescriptorChain> chains;
  for (int i = 0; i < 3; ++i) chains.push_back(pop_good(h->device()));
  EXPECT_EQ(h->driver().free_descriptors(), 16 - 6);
  for (int i : {2, 0, 1}) ASSERT_TRUE(h->device().push_used(chains[i].head, static_cast<uint32_t>(100 + i)));
  for (int i : {2, 0, 1}) {
    auto u = h->driver().get_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->head, heads[i]);
    EXPECT_EQ(u->len, static_cast<uint32_t>(100 + i));
  }
  EXPECT_EQ(h->driver().free_descriptors(), 16);
  // The freed descriptors are reusable for a chain as long as the queue.
  std::vector<Buffer> full(16, Buffer{GuestAddr{h->mem().guest_base()}, 4, false});
  ASSERT_TRUE(h->driver().add(full));
  EXPECT_EQ(h->driver().free_descriptors(), 0);
  EXPECT_EQ(h->driver().add(std::vector<Buffer>{full[0]}).error().code, Errc::kBusy);
  h->driver().publish();
  DescriptorChain c = pop_good(h->device());
  EXPECT_EQ(c.readable.size(), 16u);
}

TEST(SplitQueue, IndexWrapAround) {
  RingOptions o;
  o.size = 8;
  o.start_index = 65530;
  auto h = harness(o);
  EXPECT_EQ(h->device().next_avail(), 65530);
  auto buf = h->alloc(64, 0);
  ASSERT_TRUE(buf);
  uint32_t seq = 0;
  for (int round = 0; round < 12; ++round) {
    const int n = 1 + round % 3;
    std::vector<uint16_t> heads;
    for (int i = 0; i < n; ++i) {
      const std::vector<Buffer> bufs{{*buf, static_cast<uint32_t>(1 + seq + i), false}};
      auto head = h->driver().add(bufs);
      ASSERT_TRUE(head);
      heads.push_back(*head);
    }
    h->driver().publish();
    for (int i = 0; i < n; ++i) {
      DescriptorChain c = pop_good(h->device());
      EXPECT_EQ(c.head, heads[i]);
      EXPECT_EQ(c.readable_len, 1 + seq + i);
      ASSERT_TRUE(h->device().push_used(c.head, c.head + 1000u));
    }
    EXPECT_TRUE(ring_empty(h->device()));
    for (int i = 0; i < n; ++i) {
      auto u = h->driver().get_used();
      ASSERT_TRUE(u);
      EXPECT_EQ(u->head, heads[i]);
      EXPECT_EQ(u->len, heads[i] + 1000u);
    }
    EXPECT_FALSE(h->driver().get_used());
    seq += static_cast<uint32_t>(n);
  }
  EXPECT_EQ(h->device().next_avail(), static_cast<uint16_t>(65530 + seq));
  EXPECT_LT(h->device().next_avail(), 100);  // wrapped
}

TEST(SplitQueue, AvailIdxExactlySizeAheadIsAccepted) {
  RingOptions o;
  o.size = 4;
  auto h = harness(o);
  auto buf = h->alloc(16, 0);
  ASSERT_TRUE(buf);
  for (uint16_t i = 0; i < 4; ++i) {
    h->driver().write_raw_desc(i, buf->value, 16, 0, 0);
    h->driver().push_raw_avail(i);
  }
  h->driver().publish();
  for (uint16_t i = 0; i < 4; ++i) EXPECT_EQ(pop_good(h->device()).head, i);
  EXPECT_TRUE(ring_empty(h->device()));
}

TEST(SplitQueue, SetMemoryReresolvesRings) {
  auto h = harness();
  auto buf = h->alloc(16, 0);
  ASSERT_TRUE(buf);
  ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{*buf, 16, false}}));
  h->driver().publish();
  // A new mapping of the same memfd (as after SET_MEM_TABLE) must see the same rings.
  auto gm2 = test::device_memory_for(h->mem());
  ASSERT_TRUE(gm2);
  ASSERT_TRUE(h->device().set_memory(*gm2));
  EXPECT_EQ(&h->device().memory(), gm2->get());
  EXPECT_EQ(pop_good(h->device()).readable_len, 16u);
  // A table without the rings is refused and the old one stays in use.
  auto other = virtio::DriverMemory::create(1 << 16, 0x10000000);
  ASSERT_TRUE(other);
  auto gm3 = test::device_memory_for(**other);
  ASSERT_TRUE(gm3);
  EXPECT_FALSE(h->device().set_memory(*gm3));
  EXPECT_EQ(&h->device().memory(), gm2->get());
  EXPECT_FALSE(h->device().set_memory(nullptr));
}

// --- notifications -------------------------------------------------------

TEST(SplitQueueNotify, NoEventIdxUsesFlags) {
  auto h = harness();
  auto buf = h->alloc(16, 0);
  ASSERT_TRUE(buf);
  auto cycle = [&] {
    auto head = h->driver().add(std::vector<Buffer>{{*buf, 16, true}});
    EXPECT_TRUE(head);
    h->driver().publish();
    DescriptorChain c = pop_good(h->device());
    EXPECT_TRUE(h->device().push_used(c.head, 0));
    (void)h->driver().get_used();
  };
  EXPECT_FALSE(h->device().should_notify());  // nothing published yet
  cycle();
  EXPECT_TRUE(h->device().should_notify());
  EXPECT_FALSE(h->device().should_notify());  // nothing new since
  h->driver().disable_interrupts();
  cycle();
  EXPECT_FALSE(h->device().should_notify());
  h->driver().enable_interrupts();
  cycle();
  EXPECT_TRUE(h->device().should_notify());

  // Kicks: VIRTQ_USED_F_NO_NOTIFY.
  EXPECT_TRUE(h->driver().needs_kick());   // three chains published, flag clear
  EXPECT_FALSE(h->driver().needs_kick());  // nothing published since the last check
  h->device().disable_notifications();
  ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{*buf, 16, true}}));
  h->driver().publish();
  EXPECT_FALSE(h->driver().needs_kick());
  h->device().enable_notifications();
  ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{*buf, 16, true}}));
  h->driver().publish();
  EXPECT_TRUE(h->driver().needs_kick());
}

TEST(SplitQueueNotify, EventIdxSuppressesInterrupts) {
  RingOptions o;
  o.event_idx = true;
  auto h = harness(o);
  auto buf = h->alloc(16, 0);
  ASSERT_TRUE(buf);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{*buf, 16, true}}));
  h->driver().publish();
  std::vector<DescriptorChain> cs;
  for (int i = 0; i < 4; ++i) cs.push_back(pop_good(h->device()));

  h->driver().enable_interrupts();  // used_event = 0: interrupt at the first completion
  ASSERT_TRUE(h->device().push_used(cs[0].head, 0));
  EXPECT_TRUE(h->device().should_notify());
  ASSERT_TRUE(h->device().push_used(cs[1].head, 0));
  EXPECT_FALSE(h->device().should_notify());  // driver has not consumed entry 0 yet
  ASSERT_TRUE(h->driver().get_used());
  ASSERT_TRUE(h->driver().get_used());  // used_event now 2
  ASSERT_TRUE(h->device().push_used(cs[2].head, 0));
  EXPECT_TRUE(h->device().should_notify());
  ASSERT_TRUE(h->driver().get_used());  // used_event now 3
  h->driver().disable_interrupts();
  // Batch of one more: crossing used_event 3 still notifies (stale event is 3).
  ASSERT_TRUE(h->device().push_used(cs[3].head, 0));
  EXPECT_TRUE(h->device().should_notify());
  ASSERT_TRUE(h->driver().get_used());  // interrupts disabled: used_event stays 3
  for (int i = 0; i < 3; ++i) {
    auto head = h->driver().add(std::vector<Buffer>{{*buf, 16, true}});
    ASSERT_TRUE(head);
    h->driver().publish();
    ASSERT_TRUE(h->device().push_used(pop_good(h->device()).head, 0));
    EXPECT_FALSE(h->device().should_notify()) << i;
    ASSERT_TRUE(h->driver().get_used());
  }
}

TEST(SplitQueueNotify, EventIdxUsedEventRaw) {
  // vring_need_event from the device's point of view: used_event written by the
  // driver selects exactly which completion interrupts.
  RingOptions o;
  o.event_idx = true;
  o.size = 8;
  auto h = harness(o);
  auto buf = h->alloc(16, 0);
  ASSERT_TRUE(buf);
  for (uint16_t i = 0; i < 8; ++i) {
    h->driver().write_raw_desc(i, buf->value, 16, kDescFWrite, 0);
    h->driver().push_raw_avail(i);
  }
  h->driver().publish();
  const QueueConfig c = h->driver().device_config();
  uint8_t* used_event = h->mem().ptr(GuestAddr{c.avail.value + avail_used_event_off(8)}, 2);
  const uint16_t ev = 4;
  std::memcpy(used_event, &ev, 2);
  // Publish one at a time: only the transition past index 4 (new idx 5) notifies.
  for (uint16_t i = 0; i < 8; ++i) {
    ASSERT_TRUE(h->device().push_used(pop_good(h->device()).head, 0));
    EXPECT_EQ(h->device().should_notify(), i == 4) << i;
  }
}

TEST(SplitQueueNotify, EventIdxSuppressesKicks) {
  RingOptions o;
  o.event_idx = true;
  auto h = harness(o);
  auto buf = h->alloc(16, 0);
  ASSERT_TRUE(buf);
  auto add = [&] {
    ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{*buf, 16, false}}));
    h->driver().publish();
  };
  h->device().enable_notifications();  // avail_event = 0
  add();
  EXPECT_TRUE(h->driver().needs_kick());
  add();  // device has not caught up: avail_event still 0
  EXPECT_FALSE(h->driver().needs_kick());
  (void)pop_good(h->device());
  (void)pop_good(h->device());
  add();  // device popped but did not re-enable: still suppressed
  EXPECT_FALSE(h->driver().needs_kick());
  // The sleep protocol: enable, re-check, then sleep.
  h->device().enable_notifications();  // avail_event = 2, but entry 2 is already there
  EXPECT_FALSE(ring_empty(h->device()));  // the re-check finds it: no lost wake-up
  h->device().enable_notifications();  // avail_event = 3
  EXPECT_TRUE(ring_empty(h->device()));
  add();
  EXPECT_TRUE(h->driver().needs_kick());
  EXPECT_FALSE(h->driver().needs_kick());  // nothing new
  // avail_event is the device's next_avail.
  const QueueConfig c = h->driver().device_config();
  uint16_t avail_event = 0;
  std::memcpy(&avail_event, h->mem().ptr(GuestAddr{c.used.value + used_avail_event_off(c.size)}, 2), 2);
  EXPECT_EQ(avail_event, 3);
}

// Polling (iceblkd --poll-us): while the device spins on the ring it asks for no
// kicks at all, with or without EVENT_IDX; has_available() sees the chains.
TEST(SplitQueueNotify, DisableWhilePollingSuppressesEveryKick) {
  for (const bool event_idx : {true, false}) {
    SCOPED_TRACE(event_idx ? "EVENT_IDX" : "flags");
    RingOptions o;
    o.event_idx = event_idx;
    auto h = harness(o);
    auto buf = h->alloc(16, 0);
    ASSERT_TRUE(buf);
    auto add = [&] {
      ASSERT_TRUE(h->driver().add(std::vector<Buffer>{{*buf, 16, false}}));
      h->driver().publish();
    };
    h->device().enable_notifications();
    EXPECT_FALSE(h->device().has_available());
    add();
    EXPECT_TRUE(h->driver().needs_kick());
    EXPECT_TRUE(h->device().has_available());
    (void)pop_good(h->device());
    EXPECT_FALSE(h->device().has_available());
    for (int i = 0; i < 3; ++i) {
      // A pass ends as QueueProcessor::process() ends it (kicks on, ring re-checked);
      // then the worker polls: not even the first chain past next_avail kicks.
      h->device().enable_notifications();
      h->device().disable_notifications();
      add();
      EXPECT_FALSE(h->driver().needs_kick()) << i;
      EXPECT_TRUE(h->device().has_available());
      (void)pop_good(h->device());
    }
    // The sleep protocol after polling: enable, re-check, sleep; the next chain kicks.
    h->device().enable_notifications();
    EXPECT_FALSE(h->device().has_available());
    add();
    EXPECT_TRUE(h->driver().needs_kick());
  }
}

// --- concurrency ---------------------------------------------------------

TEST(SplitQueueThreads, DriverAndDeviceOnTwoThreads) {
  // The driver thread submits requests carrying a sequence number; the device
  // thread completes them (out of order, in pairs swapped) with seq * 3 written
  // back. Exercises the acquire/release pairs on both indexes.
  RingOptions o;
  o.size = 64;
  o.event_idx = true;
  o.indirect = true;
  o.mem_size = 4 << 20;
  auto h = harness(o);
  constexpr uint32_t kRequests = 20000;
  std::atomic<bool> stop{false};
  std::thread device([&] {
    SplitQueue& q = h->device();
    std::vector<DescriptorChain> pending;
    uint32_t done = 0;
    while (done < kRequests && !stop.load()) {
      auto r = q.pop();
      if (!r) {
        ADD_FAILURE() << r.error().to_string();
        break;
      }
      if (!r->has_value()) {
        for (auto& c : pending) ASSERT_TRUE(q.push_used(c.head, 4));
        done += static_cast<uint32_t>(pending.size());
        pending.clear();
        q.enable_notifications();
        std::this_thread::yield();
        continue;
      }
      auto* c = std::get_if<DescriptorChain>(&**r);
      if (c == nullptr) {
        ADD_FAILURE() << "bad chain";
        break;
      }
      auto seq = q.memory().read_obj<uint32_t>(c->readable.at(0).addr);
      ASSERT_TRUE(seq);
      ASSERT_TRUE(q.memory().write_obj(c->writable.at(0).addr, *seq * 3));
      pending.push_back(std::move(*c));
      if (pending.size() == 2) {
        std::swap(pending[0], pending[1]);
        for (auto& p : pending) ASSERT_TRUE(q.push_used(p.head, 4));
        done += 2;
        pending.clear();
        (void)q.should_notify();
      }
    }
  });
  struct Req {
    GuestAddr buf{0};
    uint32_t seq = 0;
  };
  std::vector<std::optional<Req>> inflight(64);
  uint32_t submitted = 0;
  uint32_t completed = 0;
  bool ok = true;
  while (completed < kRequests && ok) {
    while (submitted < kRequests) {
      auto buf = h->mem().alloc(8, 8);
      if (!buf) break;
      std::memcpy(h->mem().ptr(*buf, 4), &submitted, 4);
      const std::vector<Buffer> bufs{{*buf, 4, false}, {GuestAddr{buf->value + 4}, 4, true}};
      auto head = h->driver().add(bufs, submitted % 3 == 0);
      if (!head) {
        h->mem().free(*buf);
        break;
      }
      inflight[*head] = Req{*buf, submitted};
      ++submitted;
    }
    h->driver().publish();
    while (auto u = h->driver().get_used()) {
      if (u->head >= 64 || !inflight[u->head]) {
        ADD_FAILURE() << "unexpected head " << u->head;
        ok = false;
        break;
      }
      Req r = *inflight[u->head];
      inflight[u->head].reset();
      uint32_t v = 0;
      std::memcpy(&v, h->mem().ptr(GuestAddr{r.buf.value + 4}, 4), 4);
      if (v != r.seq * 3 || u->len != 4) {
        ADD_FAILURE() << "seq " << r.seq << " got " << v;
        ok = false;
      }
      h->mem().free(r.buf);
      ++completed;
    }
    std::this_thread::yield();
  }
  stop = true;
  device.join();
  EXPECT_EQ(completed, kRequests);
  EXPECT_EQ(h->driver().free_descriptors(), 64);
}

}  // namespace
}  // namespace iceblk::virtio
