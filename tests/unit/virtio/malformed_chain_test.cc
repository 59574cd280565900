// Every malformed ring or chain the device must reject (VIRTIO 1.3 §2.7.5, §2.7.13).
// A malformed chain with a valid head is a BadChain: the device completes it with
// length 0 and the queue keeps working. A broken ring is an error from pop().
#include <gtest/gtest.h>

#include "support/ring_harness.h"
#include "virtio/ring_layout.h"
#include "virtio/split_queue.h"

namespace iceblk::virtio {
namespace {

using test::RingHarness;
using test::RingOptions;

class Malformed : public ::testing::Test {
 protected:
  void make(RingOptions o = {}) {
    if (o.size == 16) o.size = 8;
    auto h = RingHarness::create(o);
    ASSERT_TRUE(h) << h.error().to_string();
    h_ = std::move(*h);
    auto b = h_->alloc(4096, 0);
    ASSERT_TRUE(b);
    buf_ = b->value;
  }
  void SetUp() override { make(); }

  void desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    h_->driver().write_raw_desc(i, addr, len, flags, next);
  }
  void submit(uint16_t head) {
    h_->driver().push_raw_avail(head);
    h_->driver().publish();
  }

  // Pops one entry, expects a BadChain for `head` with `code`, completes it with
  // length 0 and checks the driver receives that completion; then checks that a
  // good chain still goes through (the queue keeps working).
  void expect_bad(uint16_t head, Errc code) {
    auto r = h_->device().pop();
    ASSERT_TRUE(r) << r.error().to_string();
    ASSERT_TRUE(r->has_value());
    auto* bad = std::get_if<BadChain>(&**r);
    ASSERT_NE(bad, nullptr) << "chain was accepted";
    EXPECT_EQ(bad->head, head);
    EXPECT_EQ(bad->error.code, code) << bad->error.to_string();
    ASSERT_TRUE(h_->device().push_used(bad->head, 0));
    auto u = h_->driver().get_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->head, head);
    EXPECT_EQ(u->len, 0u);
    expect_queue_still_works();
  }
  void expect_queue_still_works() {
    const uint16_t last = static_cast<uint16_t>(h_->device().size() - 1);
    desc(last, buf_, 8, 0);
    submit(last);
    auto r = h_->device().pop();
    ASSERT_TRUE(r && r->has_value());
    auto* c = std::get_if<DescriptorChain>(&**r);
    ASSERT_NE(c, nullptr) << std::get<BadChain>(**r).error.to_string();
    EXPECT_EQ(c->readable_len, 8u);
    ASSERT_TRUE(h_->device().push_used(c->head, 0));
    ASSERT_TRUE(h_->driver().get_used());
  }
  void expect_ring_broken() {
    auto r = h_->device().pop();
    ASSERT_FALSE(r) << "pop succeeded";
    EXPECT_EQ(r.error().code, Errc::kProtocol) << r.error().to_string();
  }

  std::unique_ptr<RingHarness> h_;
  uint64_t buf_ = 0;
};

TEST_F(Malformed, LoopOfTwo) {
  desc(0, buf_, 8, kDescFNext, 1);
  desc(1, buf_, 8, kDescFNext, 0);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

TEST_F(Malformed, SelfLoop) {
  desc(2, buf_, 8, kDescFNext, 2);
  submit(2);
  expect_bad(2, Errc::kProtocol);
}

TEST_F(Malformed, ChainLongerThanQueue) {
  // size 8: 0 -> 1 -> ... -> 7 -> 0 is 9+ descriptors.
  for (uint16_t i = 0; i < 8; ++i) desc(i, buf_, 8, kDescFNext, static_cast<uint16_t>((i + 1) % 8));
  submit(0);
  auto r = h_->device().pop();
  ASSERT_TRUE(r && r->has_value());
  auto* bad = std::get_if<BadChain>(&**r);
  ASSERT_NE(bad, nullptr);
  EXPECT_EQ(bad->error.code, Errc::kProtocol);
}

TEST_F(Malformed, ChainExactlyQueueSizeIsAccepted) {
  for (uint16_t i = 0; i < 8; ++i) desc(i, buf_, 8, i < 7 ? kDescFNext : 0, static_cast<uint16_t>(i + 1));
  submit(0);
  auto r = h_->device().pop();
  ASSERT_TRUE(r && r->has_value());
  auto* c = std::get_if<DescriptorChain>(&**r);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->readable.size(), 8u);
}

TEST_F(Malformed, NextIndexOutOfRange) {
  desc(0, buf_, 8, kDescFNext, 8);
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
  desc(0, buf_, 8, kDescFNext, 0xffff);
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
}

TEST_F(Malformed, HeadIndexOutOfRangeBreaksRing) {
  submit(8);
  expect_ring_broken();
}

TEST_F(Malformed, AvailIdxJumpBeyondSize) {
  h_->driver().set_raw_avail_idx(9);  // 9 chains "available" on a ring of 8
  expect_ring_broken();
  h_->driver().set_raw_avail_idx(0x8000);
  expect_ring_broken();
  h_->driver().set_raw_avail_idx(0xffff);  // "behind" = far ahead mod 2^16
  expect_ring_broken();
}

TEST_F(Malformed, ReadableAfterWritable) {
  desc(0, buf_, 8, kDescFWrite | kDescFNext, 1);
  desc(1, buf_ + 8, 8, 0, 0);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

TEST_F(Malformed, BufferOutsideGuestMemory) {
  const uint64_t base = h_->mem().guest_base();
  const uint64_t end = base + h_->mem().size();
  desc(0, base - 8, 8, 0);  // below
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
  desc(0, end - 8, 9, 0);  // straddles the end
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
  desc(0, buf_, 8, kDescFNext, 1);  // second buffer bad, writable
  desc(1, end, 1, kDescFWrite);
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
  desc(0, ~uint64_t{0} - 3, 8, 0);  // wraps 2^64
  submit(0);
  expect_bad(0, Errc::kOverflow);
}

TEST_F(Malformed, ZeroLengthBufferOutsideMemoryIsHarmless) {
  // A zero-length buffer touches no memory; accepted (and never accessed).
  desc(0, 0xdead0000, 0, 0);
  submit(0);
  auto r = h_->device().pop();
  ASSERT_TRUE(r && r->has_value());
  EXPECT_NE(std::get_if<DescriptorChain>(&**r), nullptr);
}

TEST_F(Malformed, IndirectNotNegotiated) {
  const RingHarness::RawDesc t[] = {{buf_, 8, 0, 0}};
  auto table = h_->write_indirect_table(t);
  ASSERT_TRUE(table);
  desc(0, table->value, 16, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

class MalformedIndirect : public Malformed {
 protected:
  void SetUp() override {
    RingOptions o;
    o.indirect = true;
    make(o);
  }
  GuestAddr table(std::initializer_list<RingHarness::RawDesc> d) {
    auto t = h_->write_indirect_table(std::vector<RingHarness::RawDesc>(d));
    EXPECT_TRUE(t);
    return t ? *t : GuestAddr{0};
  }
};

TEST_F(MalformedIndirect, ValidTableIsAccepted) {
  auto t = table({{buf_, 8, kDescFNext, 1}, {buf_ + 8, 8, kDescFWrite, 0}});
  desc(0, t.value, 32, kDescFIndirect | kDescFWrite);  // WRITE on the indirect desc is ignored
  submit(0);
  auto r = h_->device().pop();
  ASSERT_TRUE(r && r->has_value());
  auto* c = std::get_if<DescriptorChain>(&**r);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->readable.size(), 1u);
  EXPECT_EQ(c->writable.size(), 1u);
}

TEST_F(MalformedIndirect, Nested) {
  auto inner = table({{buf_, 8, 0, 0}});
  auto outer = table({{inner.value, 16, kDescFIndirect, 0}});
  desc(0, outer.value, 16, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

TEST_F(MalformedIndirect, IndirectWithNext) {
  auto t = table({{buf_, 8, 0, 0}});
  desc(0, t.value, 16, kDescFIndirect | kDescFNext, 1);
  desc(1, buf_, 8, 0);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

TEST_F(MalformedIndirect, LengthZero) {
  auto t = table({{buf_, 8, 0, 0}});
  desc(0, t.value, 0, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kInvalidArgument);
}

TEST_F(MalformedIndirect, LengthNotMultipleOf16) {
  auto t = table({{buf_, 8, kDescFNext, 1}, {buf_, 8, 0, 0}});
  desc(0, t.value, 24, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kMisaligned);
}

TEST_F(MalformedIndirect, TableOutsideMemory) {
  const uint64_t end = h_->mem().guest_base() + h_->mem().size();
  desc(0, end - 16, 32, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
}

TEST_F(MalformedIndirect, TooManyEntries) {
  desc(0, buf_, (uint32_t{kMaxQueueSize} + 1) * 16, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
}

TEST_F(MalformedIndirect, NextOutsideTable) {
  auto t = table({{buf_, 8, kDescFNext, 2}, {buf_, 8, 0, 0}});
  desc(0, t.value, 32, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
}

TEST_F(MalformedIndirect, LoopInTable) {
  auto t = table({{buf_, 8, kDescFNext, 1}, {buf_, 8, kDescFNext, 0}});
  desc(0, t.value, 32, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

TEST_F(MalformedIndirect, ReadableAfterWritableInTable) {
  auto t = table({{buf_, 8, kDescFWrite | kDescFNext, 1}, {buf_, 8, 0, 0}});
  desc(0, t.value, 32, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

TEST_F(MalformedIndirect, ReadableInTableAfterWritableDirect) {
  auto t = table({{buf_, 8, 0, 0}});
  desc(0, buf_, 8, kDescFWrite | kDescFNext, 1);
  desc(1, t.value, 16, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kProtocol);
}

TEST_F(MalformedIndirect, BufferOutsideMemoryInTable) {
  auto t = table({{buf_, 8, kDescFNext, 1}, {0x10, 8, kDescFWrite, 0}});
  desc(0, t.value, 32, kDescFIndirect);
  submit(0);
  expect_bad(0, Errc::kOutOfRange);
}

class MalformedBig : public Malformed {
 protected:
  // 2 GiB of sparse memfd memory so that huge buffers lie inside guest memory.
  void SetUp() override {
    RingOptions o;
    o.mem_size = uint64_t{2} << 30;
    make(o);
  }
};

TEST_F(MalformedBig, TotalReadableLengthOverflow) {
  // Three 1.75 GiB readable buffers (all inside memory) exceed 4 GiB in total.
  const uint32_t len = 0x70000000;
  desc(0, buf_, len, kDescFNext, 1);
  desc(1, buf_, len, kDescFNext, 2);
  desc(2, buf_, len, 0);
  submit(0);
  expect_bad(0, Errc::kOverflow);
}

TEST_F(MalformedBig, TotalWritableLengthOverflow) {
  const uint32_t len = 0x70000000;
  desc(0, buf_, 16, kDescFNext, 1);
  desc(1, buf_, len, kDescFWrite | kDescFNext, 2);
  desc(2, buf_, len, kDescFWrite | kDescFNext, 3);
  desc(3, buf_, len, kDescFWrite);
  submit(0);
  expect_bad(0, Errc::kOverflow);
}

TEST_F(MalformedBig, LargeButValidChain) {
  const uint32_t len = 0x70000000;
  desc(0, buf_, len, kDescFNext, 1);
  desc(1, buf_, len, kDescFWrite | kDescFNext, 2);
  desc(2, buf_, len, kDescFWrite);
  submit(0);
  auto r = h_->device().pop();
  ASSERT_TRUE(r && r->has_value());
  auto* c = std::get_if<DescriptorChain>(&**r);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->writable_len, uint64_t{2} * len);
}

}  // namespace
}  // namespace iceblk::virtio
