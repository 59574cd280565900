// Decoder tests: every request's size rules, fd counts (missing / extra fds are
// rejected and closed), flags, unknown ids. The decoder must never crash.
#include "vhost_user/messages.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "unit/vhost_user/fd_probe.h"

namespace iceblk::vhost_user {
namespace {

using testing::FdProbe;

RawMessage raw(Request r, std::vector<uint8_t> payload, uint32_t flags = kVersion) {
  RawMessage m;
  m.header = Header{static_cast<uint32_t>(r), flags, static_cast<uint32_t>(payload.size())};
  m.payload = std::move(payload);
  return m;
}

template <typename T>
std::vector<uint8_t> bytes(const T& t) {
  auto s = as_bytes_of(t);
  return {s.begin(), s.end()};
}

std::vector<uint8_t> u64(uint64_t v) { return bytes(v); }

Errc decode_err(RawMessage m) {
  auto r = decode(std::move(m));
  EXPECT_FALSE(r.has_value());
  return r ? Errc::kInvalidArgument : r.error().code;
}

TEST(VhostMessages, WireLayouts) {
  EXPECT_EQ(sizeof(Header), 12u);
  EXPECT_EQ(sizeof(VringState), 8u);
  EXPECT_EQ(sizeof(VringAddr), 40u);
  EXPECT_EQ(sizeof(MemRegionDesc), 32u);
  EXPECT_EQ(kMemTablePayloadSize, 264u);
  EXPECT_EQ(sizeof(SingleMemRegion), 40u);
  EXPECT_EQ(sizeof(ConfigHeader), 12u);
  auto enc = encode(5, kVersion | kFlagReply, std::vector<uint8_t>{1, 2, 3});
  ASSERT_EQ(enc.size(), 15u);
  Header h;
  std::memcpy(&h, enc.data(), sizeof h);
  EXPECT_EQ(h.request, 5u);
  EXPECT_EQ(h.flags, kVersion | kFlagReply);
  EXPECT_EQ(h.size, 3u);
}

TEST(VhostMessages, NoPayloadRequests) {
  for (Request r : {Request::kGetFeatures, Request::kSetOwner, Request::kResetOwner, Request::kGetProtocolFeatures,
                    Request::kGetQueueNum, Request::kResetDevice, Request::kGetMaxMemSlots, Request::kGetStatus}) {
    SCOPED_TRACE(std::string(request_name(r)));
    auto ok = decode(raw(r, {}));
    ASSERT_TRUE(ok.has_value()) << ok.error().to_string();
    EXPECT_EQ(ok->request, r);
    EXPECT_TRUE(std::holds_alternative<NoPayload>(ok->body));
    EXPECT_EQ(decode_err(raw(r, u64(0))), Errc::kProtocol);
    EXPECT_EQ(decode_err(raw(r, {1})), Errc::kProtocol);
    FdProbe probe;
    auto m = raw(r, {});
    m.fds.push_back(probe.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(probe.closed());
  }
}

TEST(VhostMessages, U64Requests) {
  for (Request r : {Request::kSetFeatures, Request::kSetProtocolFeatures, Request::kSetStatus}) {
    SCOPED_TRACE(std::string(request_name(r)));
    auto ok = decode(raw(r, u64(0x1234567890abcdefull)));
    ASSERT_TRUE(ok.has_value());
    EXPECT_EQ(std::get<U64Payload>(ok->body).value, 0x1234567890abcdefull);
    for (size_t n : {0, 1, 4, 7, 9, 16}) {
      EXPECT_EQ(decode_err(raw(r, std::vector<uint8_t>(n))), Errc::kProtocol) << n;
    }
    FdProbe probe;
    auto m = raw(r, u64(1));
    m.fds.push_back(probe.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(probe.closed());
  }
}

TEST(VhostMessages, VringStateRequests) {
  for (Request r : {Request::kSetVringNum, Request::kSetVringBase, Request::kGetVringBase, Request::kSetVringEnable}) {
    SCOPED_TRACE(std::string(request_name(r)));
    auto ok = decode(raw(r, bytes(VringState{3, 77})));
    ASSERT_TRUE(ok.has_value());
    EXPECT_EQ(std::get<VringStateMsg>(ok->body).state.index, 3u);
    EXPECT_EQ(std::get<VringStateMsg>(ok->body).state.num, 77u);
    for (size_t n : {0, 4, 12, 16}) EXPECT_EQ(decode_err(raw(r, std::vector<uint8_t>(n))), Errc::kProtocol) << n;
    FdProbe probe;
    auto m = raw(r, bytes(VringState{}));
    m.fds.push_back(probe.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(probe.closed());
  }
}

TEST(VhostMessages, VringAddr) {
  VringAddr a;
  a.index = 1;
  a.desc_user_addr = 0x1000;
  a.used_user_addr = 0x3000;
  a.avail_user_addr = 0x2000;
  auto ok = decode(raw(Request::kSetVringAddr, bytes(a)));
  ASSERT_TRUE(ok.has_value());
  const auto& got = std::get<VringAddrMsg>(ok->body).addr;
  EXPECT_EQ(got.desc_user_addr, 0x1000u);
  EXPECT_EQ(got.avail_user_addr, 0x2000u);
  EXPECT_EQ(got.used_user_addr, 0x3000u);
  for (size_t n : {0, 8, 32, 39, 41, 48}) {
    EXPECT_EQ(decode_err(raw(Request::kSetVringAddr, std::vector<uint8_t>(n))), Errc::kProtocol) << n;
  }
}

TEST(VhostMessages, VringFdRequests) {
  for (Request r : {Request::kSetVringKick, Request::kSetVringCall, Request::kSetVringErr}) {
    SCOPED_TRACE(std::string(request_name(r)));
    {  // index + fd
      FdProbe probe;
      auto m = raw(r, u64(5));
      m.fds.push_back(probe.take());
      auto ok = decode(std::move(m));
      ASSERT_TRUE(ok.has_value());
      auto& b = std::get<VringFdMsg>(ok->body);
      EXPECT_EQ(b.index, 5);
      EXPECT_FALSE(b.no_fd);
      EXPECT_TRUE(b.fd.valid());
      EXPECT_FALSE(probe.closed());
    }
    {  // no-fd bit, no fd
      auto ok = decode(raw(r, u64(2 | kVringNoFdMask)));
      ASSERT_TRUE(ok.has_value());
      EXPECT_TRUE(std::get<VringFdMsg>(ok->body).no_fd);
      EXPECT_EQ(std::get<VringFdMsg>(ok->body).index, 2);
    }
    // fd missing
    EXPECT_EQ(decode_err(raw(r, u64(0))), Errc::kProtocol);
    {  // no-fd bit but an fd attached: rejected, fd closed
      FdProbe probe;
      auto m = raw(r, u64(kVringNoFdMask));
      m.fds.push_back(probe.take());
      EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
      EXPECT_TRUE(probe.closed());
    }
    {  // two fds: rejected, both closed
      FdProbe p1, p2;
      auto m = raw(r, u64(0));
      m.fds.push_back(p1.take());
      m.fds.push_back(p2.take());
      EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
      EXPECT_TRUE(p1.closed());
      EXPECT_TRUE(p2.closed());
    }
    {  // reserved bits
      FdProbe probe;
      auto m = raw(r, u64(1ull << 9));
      m.fds.push_back(probe.take());
      EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
      EXPECT_TRUE(probe.closed());
    }
    EXPECT_EQ(decode_err(raw(r, std::vector<uint8_t>(4))), Errc::kProtocol);
  }
}

std::vector<uint8_t> mem_table(uint32_t n, size_t entries, uint64_t size = 0x1000) {
  MemoryTableHeader h{n, 0};
  auto out = bytes(h);
  for (size_t i = 0; i < entries; ++i) {
    auto d = bytes(MemRegionDesc{0x100000 * (i + 1), size, 0x7f0000000000 + 0x100000 * i, 0});
    out.insert(out.end(), d.begin(), d.end());
  }
  return out;
}

TEST(VhostMessages, SetMemTable) {
  {
    std::vector<FdProbe> probes(2);
    auto m = raw(Request::kSetMemTable, mem_table(2, 2));
    for (auto& p : probes) m.fds.push_back(p.take());
    auto ok = decode(std::move(m));
    ASSERT_TRUE(ok.has_value()) << ok.error().to_string();
    auto& b = std::get<MemTableMsg>(ok->body);
    ASSERT_EQ(b.regions.size(), 2u);
    EXPECT_EQ(b.fds.size(), 2u);
    EXPECT_EQ(b.regions[1].guest_phys_addr, 0x200000u);
  }
  {  // full 8-slot struct with 1 region is accepted
    FdProbe p;
    auto m = raw(Request::kSetMemTable, mem_table(1, 8));
    m.fds.push_back(p.take());
    EXPECT_TRUE(decode(std::move(m)).has_value());
  }
  struct Case {
    uint32_t n;
    size_t entries;
    size_t fds;
    uint64_t region_size;
  };
  for (const Case& c : {Case{0, 0, 0, 0x1000}, Case{9, 9, 8, 0x1000}, Case{2, 2, 1, 0x1000}, Case{2, 2, 3, 0x1000},
                        Case{1, 1, 0, 0x1000}, Case{2, 1, 2, 0x1000}, Case{1, 2, 1, 0x1000}, Case{1, 1, 1, 0}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " entries=" << c.entries << " fds=" << c.fds);
    std::vector<FdProbe> probes(c.fds);
    auto m = raw(Request::kSetMemTable, mem_table(c.n, c.entries, c.region_size));
    for (auto& p : probes) m.fds.push_back(p.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    for (auto& p : probes) EXPECT_TRUE(p.closed());
  }
  EXPECT_EQ(decode_err(raw(Request::kSetMemTable, {1, 0, 0})), Errc::kProtocol);
}

TEST(VhostMessages, AddAndRemoveMemReg) {
  SingleMemRegion r{0, MemRegionDesc{0x100000, 0x10000, 0x7f0000000000, 0}};
  {
    FdProbe p;
    auto m = raw(Request::kAddMemReg, bytes(r));
    m.fds.push_back(p.take());
    auto ok = decode(std::move(m));
    ASSERT_TRUE(ok.has_value());
    EXPECT_TRUE(std::get<MemRegMsg>(ok->body).fd.valid());
    EXPECT_EQ(std::get<MemRegMsg>(ok->body).region.memory_size, 0x10000u);
  }
  EXPECT_EQ(decode_err(raw(Request::kAddMemReg, bytes(r))), Errc::kProtocol);  // no fd
  {
    FdProbe p1, p2;
    auto m = raw(Request::kAddMemReg, bytes(r));
    m.fds.push_back(p1.take());
    m.fds.push_back(p2.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(p1.closed() && p2.closed());
  }
  {
    FdProbe p;
    auto m = raw(Request::kAddMemReg, std::vector<uint8_t>(32));
    m.fds.push_back(p.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(p.closed());
  }
  // REM_MEM_REG: no fd is fine; one fd is tolerated and closed; two are refused.
  EXPECT_TRUE(decode(raw(Request::kRemMemReg, bytes(r))).has_value());
  {
    FdProbe p;
    auto m = raw(Request::kRemMemReg, bytes(r));
    m.fds.push_back(p.take());
    auto ok = decode(std::move(m));
    ASSERT_TRUE(ok.has_value());
    EXPECT_FALSE(std::get<MemRegMsg>(ok->body).fd.valid());
    EXPECT_TRUE(p.closed());
  }
  {
    FdProbe p1, p2;
    auto m = raw(Request::kRemMemReg, bytes(r));
    m.fds.push_back(p1.take());
    m.fds.push_back(p2.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(p1.closed() && p2.closed());
  }
  EXPECT_EQ(decode_err(raw(Request::kRemMemReg, std::vector<uint8_t>(41))), Errc::kProtocol);
}

std::vector<uint8_t> config(uint32_t offset, uint32_t size, size_t data_len, uint32_t flags = 0) {
  auto out = bytes(ConfigHeader{offset, size, flags});
  for (size_t i = 0; i < data_len; ++i) out.push_back(static_cast<uint8_t>(i));
  return out;
}

TEST(VhostMessages, Config) {
  for (Request r : {Request::kGetConfig, Request::kSetConfig}) {
    SCOPED_TRACE(std::string(request_name(r)));
    auto ok = decode(raw(r, config(8, 4, 4, 1)));
    ASSERT_TRUE(ok.has_value());
    const auto& c = std::get<ConfigMsg>(ok->body);
    EXPECT_EQ(c.offset, 8u);
    EXPECT_EQ(c.size, 4u);
    EXPECT_EQ(c.flags, 1u);
    EXPECT_EQ(c.data, (std::vector<uint8_t>{0, 1, 2, 3}));
    EXPECT_TRUE(decode(raw(r, config(0, 256, 256))).has_value());
    EXPECT_TRUE(decode(raw(r, config(0, 0, 0))).has_value());
    EXPECT_EQ(decode_err(raw(r, config(0, 257, 257))), Errc::kProtocol);         // > VHOST_USER_MAX_CONFIG_SIZE
    EXPECT_EQ(decode_err(raw(r, config(0, 4, 3))), Errc::kProtocol);             // short
    EXPECT_EQ(decode_err(raw(r, config(0, 4, 5))), Errc::kProtocol);             // long
    EXPECT_EQ(decode_err(raw(r, config(0, 0xffffffff, 4))), Errc::kProtocol);   // huge size field
    EXPECT_EQ(decode_err(raw(r, std::vector<uint8_t>(11))), Errc::kProtocol);    // no header
    FdProbe p;
    auto m = raw(r, config(0, 4, 4));
    m.fds.push_back(p.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(p.closed());
  }
}

TEST(VhostMessages, UnknownAndUnsupportedRequests) {
  for (uint32_t id : {0u, 44u, 45u, 100u, 0x7fffffffu, 0xffffffffu}) {
    RawMessage m;
    m.header = Header{id, kVersion, 0};
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol) << id;
  }
  for (Request r : {Request::kSetLogBase, Request::kSetLogFd, Request::kSendRarp,
                    Request::kSetBackendReqFd, Request::kIotlbMsg, Request::kSetVringEndian,
                    Request::kPostcopyAdvise, Request::kVringKick, Request::kSetDeviceStateFd}) {
    FdProbe p;
    auto m = raw(r, u64(0));
    m.fds.push_back(p.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kUnsupported) << request_name(r);
    EXPECT_TRUE(p.closed());
  }
}

TEST(VhostMessages, InflightFdMessages) {
  InflightDesc d{8192, 0, 2, 128, 0};
  const auto payload = std::vector<uint8_t>(as_bytes_of(d).begin(), as_bytes_of(d).end());
  auto get = decode(raw(Request::kGetInflightFd, payload));
  ASSERT_TRUE(get) << get.error().to_string();
  EXPECT_EQ(std::get<InflightMsg>(get->body).desc.queue_size, 128);
  EXPECT_TRUE(has_own_reply(Request::kGetInflightFd));
  {
    FdProbe p;  // GET_INFLIGHT_FD carries no fd
    auto m = raw(Request::kGetInflightFd, payload);
    m.fds.push_back(p.take());
    EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
    EXPECT_TRUE(p.closed());
  }
  EXPECT_EQ(decode_err(raw(Request::kSetInflightFd, payload)),
            Errc::kProtocol);                                                    // SET needs its fd
  EXPECT_EQ(decode_err(raw(Request::kGetInflightFd, u64(0))), Errc::kProtocol);  // 8 bytes, not 24
  FdProbe p;
  auto m = raw(Request::kSetInflightFd, payload);
  m.fds.push_back(p.take());
  auto set = decode(std::move(m));
  ASSERT_TRUE(set) << set.error().to_string();
  const auto& b = std::get<InflightMsg>(set->body);
  EXPECT_EQ(b.desc.mmap_size, 8192u);
  EXPECT_EQ(b.desc.num_queues, 2);
  EXPECT_TRUE(b.fd.valid());
}

TEST(VhostMessages, FlagsAndHeaderSize) {
  EXPECT_EQ(decode_err(raw(Request::kGetFeatures, {}, 0)), Errc::kProtocol);         // version 0
  EXPECT_EQ(decode_err(raw(Request::kGetFeatures, {}, 2)), Errc::kProtocol);         // version 2
  EXPECT_EQ(decode_err(raw(Request::kGetFeatures, {}, kVersion | kFlagReply)), Errc::kProtocol);
  auto ok = decode(raw(Request::kSetOwner, {}, kVersion | kFlagNeedReply));
  ASSERT_TRUE(ok.has_value());
  EXPECT_TRUE(ok->need_reply());
  auto m = raw(Request::kSetFeatures, u64(1));
  m.header.size = 16;  // header disagrees with the bytes read
  EXPECT_EQ(decode_err(std::move(m)), Errc::kProtocol);
}

// Random ids, sizes and fd counts: decode() must return (not crash) and close every
// fd it does not hand out.
TEST(VhostMessages, RandomInputNeverCrashesAndClosesFds) {
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 3000; ++iter) {
    RawMessage m;
    const auto id = static_cast<uint32_t>(rng() % 50);
    std::vector<uint8_t> payload(rng() % 300);
    for (auto& b : payload) b = static_cast<uint8_t>(rng());
    if (!payload.empty() && rng() % 2) payload[0] = static_cast<uint8_t>(rng() % 10);  // plausible counts
    m.header = Header{id, (rng() % 4 == 0) ? static_cast<uint32_t>(rng()) : kVersion,
                      static_cast<uint32_t>(payload.size())};
    m.payload = std::move(payload);
    std::vector<FdProbe> probes(rng() % 4);
    for (auto& p : probes) m.fds.push_back(p.take());
    {
      auto r = decode(std::move(m));
      (void)r;
    }  // any fds moved into a decoded body are closed with it
    for (auto& p : probes) ASSERT_TRUE(p.closed()) << "iteration " << iter;
  }
}

TEST(VhostMessages, RequestNames) {
  EXPECT_EQ(request_name(Request::kSetVringKick), "SET_VRING_KICK");
  EXPECT_EQ(request_name_of(37), "ADD_MEM_REG");
  EXPECT_EQ(request_name_of(999), "UNKNOWN(999)");
}

}  // namespace
}  // namespace iceblk::vhost_user
