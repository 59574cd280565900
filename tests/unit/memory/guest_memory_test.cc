#include "memory/guest_memory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

namespace iceblk::memory {
namespace {

constexpr uint64_t kTop = ~uint64_t{0};

// Host buffers that back fake regions (no mapping needed: Region::mapping may be null).
struct Buffers {
  std::vector<std::vector<uint8_t>> bufs;
  Region make(uint64_t guest, uint64_t size, uint64_t user, uint8_t fill = 0) {
    bufs.emplace_back(size, fill);
    Region r;
    r.guest_addr = guest;
    r.size = size;
    r.user_addr = user;
    r.host = bufs.back().data();
    return r;
  }
};

TEST(GuestMemoryCreate, SortsRegions) {
  Buffers b;
  auto r2 = b.make(0x3000, 0x1000, 0x30000);
  auto r1 = b.make(0x1000, 0x1000, 0x10000);
  auto gm = GuestMemory::create({r2, r1});
  ASSERT_TRUE(gm) << gm.error().to_string();
  ASSERT_EQ(gm->regions().size(), 2u);
  EXPECT_EQ(gm->regions()[0].guest_addr, 0x1000u);
  EXPECT_EQ(gm->regions()[1].guest_addr, 0x3000u);
}

TEST(GuestMemoryCreate, RejectsGuestOverlap) {
  Buffers b;
  auto gm = GuestMemory::create({b.make(0x1000, 0x1000, 0x10000), b.make(0x1fff, 0x1000, 0x20000)});
  ASSERT_FALSE(gm);
  EXPECT_EQ(gm.error().code, Errc::kInvalidArgument);
}

TEST(GuestMemoryCreate, RejectsUserOverlap) {
  Buffers b;
  auto gm = GuestMemory::create({b.make(0x1000, 0x1000, 0x10000), b.make(0x5000, 0x1000, 0x10800)});
  ASSERT_FALSE(gm);
  EXPECT_EQ(gm.error().code, Errc::kInvalidArgument);
}

TEST(GuestMemoryCreate, AcceptsAdjacentRegions) {
  Buffers b;
  EXPECT_TRUE(GuestMemory::create({b.make(0x1000, 0x1000, 0x10000), b.make(0x2000, 0x1000, 0x11000)}));
}

TEST(GuestMemoryCreate, RejectsEmptyNullAndWrapping) {
  Buffers b;
  auto empty = b.make(0x1000, 0x10, 0);
  empty.size = 0;
  EXPECT_EQ(GuestMemory::create({empty}).error().code, Errc::kInvalidArgument);
  auto null_host = b.make(0x1000, 0x10, 0);
  null_host.host = nullptr;
  EXPECT_EQ(GuestMemory::create({null_host}).error().code, Errc::kInvalidArgument);
  auto wrap = b.make(kTop - 0xf, 0x10, 0);  // ends exactly at 2^64: allowed
  EXPECT_TRUE(GuestMemory::create({wrap}));
  wrap.size = 0x11;  // one byte past 2^64
  EXPECT_EQ(GuestMemory::create({wrap}).error().code, Errc::kOverflow);
  auto uwrap = b.make(0x1000, 0x10, kTop - 0x7);
  EXPECT_EQ(GuestMemory::create({uwrap}).error().code, Errc::kOverflow);
}

class TwoRegions : public ::testing::Test {
 protected:
  void SetUp() override {
    // [0x1000, 0x2000) and [0x2000, 0x3000) adjacent, gap, then [0x5000, 0x6000).
    auto gm = GuestMemory::create({b_.make(0x1000, 0x1000, 0x7f0000001000, 0xa1),
                                   b_.make(0x2000, 0x1000, 0x7f0000100000, 0xa2),
                                   b_.make(0x5000, 0x1000, 0x7f0000200000, 0xa3)});
    ASSERT_TRUE(gm) << gm.error().to_string();
    gm_ = std::move(*gm);
  }
  uint8_t* host(size_t i) { return b_.bufs[i].data(); }
  Buffers b_;
  GuestMemory gm_;
};

TEST_F(TwoRegions, TranslateInsideOneRegion) {
  std::vector<iovec> iov;
  ASSERT_TRUE(gm_.translate(GuestAddr{0x1100}, 0x200, iov));
  ASSERT_EQ(iov.size(), 1u);
  EXPECT_EQ(iov[0].iov_base, host(0) + 0x100);
  EXPECT_EQ(iov[0].iov_len, 0x200u);
}

TEST_F(TwoRegions, TranslateSplitsAcrossAdjacentRegions) {
  std::vector<iovec> iov;
  ASSERT_TRUE(gm_.translate(GuestAddr{0x1ff0}, 0x20, iov));
  ASSERT_EQ(iov.size(), 2u);
  EXPECT_EQ(iov[0].iov_base, host(0) + 0xff0);
  EXPECT_EQ(iov[0].iov_len, 0x10u);
  EXPECT_EQ(iov[1].iov_base, host(1));
  EXPECT_EQ(iov[1].iov_len, 0x10u);
}

TEST_F(TwoRegions, TranslateRejectsGapAndAppendsNothing) {
  std::vector<iovec> iov{iovec{nullptr, 7}};
  auto st = gm_.translate(GuestAddr{0x2ff0}, 0x20, iov);  // runs into the gap at 0x3000
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kOutOfRange);
  ASSERT_EQ(iov.size(), 1u);  // untouched
  EXPECT_EQ(gm_.translate(GuestAddr{0x4000}, 1, iov).error().code, Errc::kOutOfRange);
  EXPECT_EQ(gm_.translate(GuestAddr{0x0}, 0x1001, iov).error().code, Errc::kOutOfRange);
  EXPECT_EQ(gm_.translate(GuestAddr{0x5fff}, 2, iov).error().code, Errc::kOutOfRange);
  EXPECT_TRUE(gm_.translate(GuestAddr{0x5fff}, 1, iov));
}

TEST_F(TwoRegions, TranslateLenZeroYieldsNothing) {
  std::vector<iovec> iov;
  EXPECT_TRUE(gm_.translate(GuestAddr{0xdead0000}, 0, iov));
  EXPECT_TRUE(iov.empty());
}

TEST_F(TwoRegions, TranslateOverflowAt2To64) {
  std::vector<iovec> iov;
  EXPECT_EQ(gm_.translate(GuestAddr{kTop}, 2, iov).error().code, Errc::kOverflow);
  EXPECT_EQ(gm_.translate(GuestAddr{0x1000}, kTop, iov).error().code, Errc::kOverflow);
  EXPECT_EQ(gm_.check(GuestAddr{0x1000}, kTop).error().code, Errc::kOverflow);
  // len reaching exactly 2^64 - 1 from 0 does not wrap but is out of range.
  EXPECT_EQ(gm_.translate(GuestAddr{0}, kTop, iov).error().code, Errc::kOutOfRange);
  EXPECT_TRUE(iov.empty());
}

TEST(GuestMemoryTop, RegionAtTopOfAddressSpace) {
  Buffers b;
  auto gm = GuestMemory::create({b.make(kTop - 0xfff, 0x1000, 0x1000)});
  ASSERT_TRUE(gm);
  std::vector<iovec> iov;
  EXPECT_TRUE(gm->translate(GuestAddr{kTop}, 1, iov));
  EXPECT_TRUE(gm->translate(GuestAddr{kTop - 0xfff}, 0x1000, iov));
  EXPECT_EQ(gm->translate(GuestAddr{kTop}, 2, iov).error().code, Errc::kOverflow);
  EXPECT_EQ(gm->contiguous(GuestAddr{kTop - 1}, 3).error().code, Errc::kOverflow);
  ASSERT_EQ(iov.size(), 2u);
  EXPECT_EQ(iov[0].iov_base, b.bufs[0].data() + 0xfff);
}

TEST_F(TwoRegions, Contiguous) {
  auto p = gm_.contiguous(GuestAddr{0x2100}, 0x100);
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, host(1) + 0x100);
  EXPECT_TRUE(gm_.contiguous(GuestAddr{0x2000}, 0x1000));
  // Adjacent regions are still two mappings: not contiguous.
  EXPECT_EQ(gm_.contiguous(GuestAddr{0x1ff0}, 0x20).error().code, Errc::kOutOfRange);
  EXPECT_EQ(gm_.contiguous(GuestAddr{0x4000}, 1).error().code, Errc::kOutOfRange);
  EXPECT_EQ(gm_.contiguous(GuestAddr{0x2000}, 0x1001).error().code, Errc::kOutOfRange);
}

TEST_F(TwoRegions, UserToGuest) {
  auto g = gm_.user_to_guest(0x7f0000100010);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->value, 0x2010u);
  EXPECT_EQ(gm_.user_to_guest(0x7f0000101000).error().code, Errc::kOutOfRange);  // one past region 1
  EXPECT_EQ(gm_.user_to_guest(0x1000).error().code, Errc::kOutOfRange);
}

TEST_F(TwoRegions, ReadWriteAcrossRegions) {
  std::array<uint8_t, 32> src{};
  std::iota(src.begin(), src.end(), uint8_t{1});
  ASSERT_TRUE(gm_.write(GuestAddr{0x1ff0}, src));
  EXPECT_EQ(std::memcmp(host(0) + 0xff0, src.data(), 16), 0);
  EXPECT_EQ(std::memcmp(host(1), src.data() + 16, 16), 0);
  std::array<uint8_t, 32> dst{};
  ASSERT_TRUE(gm_.read(GuestAddr{0x1ff0}, dst));
  EXPECT_EQ(dst, src);
}

TEST_F(TwoRegions, FailedWriteWritesNothing) {
  std::array<uint8_t, 32> src{};
  src.fill(0x55);
  auto st = gm_.write(GuestAddr{0x2ff0}, src);  // first 16 bytes valid, rest in the gap
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kOutOfRange);
  for (size_t i = 0xff0; i < 0x1000; ++i) ASSERT_EQ(host(1)[i], 0xa2) << i;
  std::array<uint8_t, 32> dst{};
  dst.fill(0x77);
  EXPECT_FALSE(gm_.read(GuestAddr{0x2ff0}, dst));
}

TEST_F(TwoRegions, ReadWriteObj) {
  struct Obj {
    uint32_t a;
    uint64_t b;
  };
  ASSERT_TRUE(gm_.write_obj(GuestAddr{0x5008}, Obj{7, 0x1122334455667788}));
  auto o = gm_.read_obj<Obj>(GuestAddr{0x5008});
  ASSERT_TRUE(o);
  EXPECT_EQ(o->a, 7u);
  EXPECT_EQ(o->b, 0x1122334455667788u);
  EXPECT_FALSE(gm_.read_obj<Obj>(GuestAddr{0x5ff8}));
}

// Many regions with random sizes and gaps: translate() must agree with a
// byte-by-byte reference lookup for random ranges (binary search, splitting).
TEST(GuestMemoryModel, TranslateMatchesReference) {
  std::mt19937_64 rng(12345);
  Buffers b;
  std::vector<Region> regions;
  uint64_t g = 0x1000;
  for (int i = 0; i < 40; ++i) {
    const uint64_t size = 1 + rng() % 300;
    const uint64_t gap = (rng() % 3 == 0) ? 0 : rng() % 200;  // a third are adjacent
    g += gap;
    regions.push_back(b.make(g, size, 0x100000000 + g * 2));
    g += size;
  }
  const uint64_t end = g;
  auto gm = GuestMemory::create(regions);
  ASSERT_TRUE(gm);
  auto host_of = [&](uint64_t a) -> uint8_t* {
    for (const auto& r : regions) {
      if (a >= r.guest_addr && a < r.guest_addr + r.size) return r.host + (a - r.guest_addr);
    }
    return nullptr;
  };
  for (int iter = 0; iter < 3000; ++iter) {
    const uint64_t a = rng() % (end + 100);
    const uint64_t len = rng() % 700;
    bool all_in = true;
    for (uint64_t x = a; x < a + len; ++x) all_in = all_in && host_of(x) != nullptr;
    std::vector<iovec> iov;
    auto st = gm->translate(GuestAddr{a}, len, iov);
    ASSERT_EQ(st.has_value(), all_in) << a << "+" << len;
    if (!all_in) {
      EXPECT_EQ(st.error().code, Errc::kOutOfRange);
      EXPECT_TRUE(iov.empty());
      continue;
    }
    // Every byte maps where the reference says, in order.
    uint64_t x = a;
    for (const auto& v : iov) {
      ASSERT_GT(v.iov_len, 0u);
      for (size_t k = 0; k < v.iov_len; ++k, ++x) {
        ASSERT_EQ(static_cast<uint8_t*>(v.iov_base) + k, host_of(x)) << x;
      }
    }
    EXPECT_EQ(x, a + len);
    // contiguous() succeeds iff the range is within one region.
    auto c = gm->contiguous(GuestAddr{a}, len);
    if (len > 0) {
      EXPECT_EQ(c.has_value(), iov.size() == 1u) << a << "+" << len;
    }
  }
}

TEST(CopyIovecs, PartialCopies) {
  std::array<uint8_t, 3> a{1, 2, 3};
  std::array<uint8_t, 4> b{4, 5, 6, 7};
  std::vector<iovec> iov{{a.data(), a.size()}, {nullptr, 0}, {b.data(), b.size()}};
  std::array<uint8_t, 5> dst{};
  EXPECT_EQ(copy_from_iovecs(iov, dst), 5u);
  EXPECT_EQ(dst, (std::array<uint8_t, 5>{1, 2, 3, 4, 5}));
  std::array<uint8_t, 10> big{};
  EXPECT_EQ(copy_from_iovecs(iov, big), 7u);
  const std::array<uint8_t, 4> src{9, 9, 9, 9};
  EXPECT_EQ(copy_to_iovecs(iov, src), 4u);
  EXPECT_EQ(a, (std::array<uint8_t, 3>{9, 9, 9}));
  EXPECT_EQ(b, (std::array<uint8_t, 4>{9, 5, 6, 7}));
}

TEST(Mapping, MapsUnalignedOffset) {
  UniqueFd fd(::memfd_create("gm-test", MFD_CLOEXEC));
  ASSERT_TRUE(fd);
  const long page = ::sysconf(_SC_PAGESIZE);
  std::vector<uint8_t> pattern(3 * static_cast<size_t>(page));
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 7 + 3);
  ASSERT_EQ(::pwrite(fd.get(), pattern.data(), pattern.size(), 0), static_cast<ssize_t>(pattern.size()));

  const uint64_t off = static_cast<uint64_t>(page) + 100;
  auto m = Mapping::map_fd(fd.get(), off, 200);
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_EQ((*m)->size(), 200u);
  EXPECT_EQ(std::memcmp((*m)->data(), pattern.data() + off, 200), 0);
  // MAP_SHARED: writes through the mapping reach the file.
  (*m)->data()[5] = 0xee;
  uint8_t back = 0;
  ASSERT_EQ(::pread(fd.get(), &back, 1, static_cast<off_t>(off + 5)), 1);
  EXPECT_EQ(back, 0xee);
  pattern[off + 5] = 0xee;

  auto m0 = Mapping::map_fd(fd.get(), 0, pattern.size());
  ASSERT_TRUE(m0);
  EXPECT_EQ(std::memcmp((*m0)->data(), pattern.data(), pattern.size()), 0);
}

TEST(Mapping, RejectsBadArguments) {
  EXPECT_EQ(Mapping::map_fd(-1, 0, 4096).error().code, Errc::kInvalidArgument);
  UniqueFd fd(::memfd_create("gm-test", MFD_CLOEXEC));
  ASSERT_TRUE(fd);
  EXPECT_EQ(Mapping::map_fd(fd.get(), 0, 0).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(Mapping::map_fd(fd.get(), 100, kTop).error().code, Errc::kOverflow);
}

}  // namespace
}  // namespace iceblk::memory
