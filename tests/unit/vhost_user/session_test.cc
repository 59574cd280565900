// Session state machine with a real test device (EchoDevice) and real memfd guest
// memory: negotiation, REPLY_ACK, memory table, ring start/stop/enable, call-fd swap,
// GET_CONFIG ranges, RESET_DEVICE, protocol violations.
#include "vhost_user/session.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <thread>

#include "memory/fault_guard.h"
#include "unit/vhost_user/echo_device.h"
#include "unit/vhost_user/fd_probe.h"
#include "virtio/driver_queue.h"
#include "virtio/inflight.h"

namespace iceblk::vhost_user {
namespace {

using testing::EchoDevice;

constexpr uint64_t kGuestBase = 0x100000;
constexpr uint64_t kUserBase = 0x7f0000000000;  // front-end VA of the same memory
constexpr uint64_t kMemSize = 1 << 20;

template <typename T>
std::vector<uint8_t> bytes(const T& t) {
  auto s = as_bytes_of(t);
  return {s.begin(), s.end()};
}

UniqueFd make_eventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

// Waits until `fd` is readable (and consumes it). false on timeout.
bool wait_signalled(int fd, int timeout_ms = 5000) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) != 1) return false;
  uint64_t v;
  return ::read(fd, &v, sizeof v) == sizeof v;
}

uint64_t reply_u64(const std::optional<Reply>& r) {
  EXPECT_TRUE(r.has_value());
  if (!r || r->payload.size() != 8) return ~0ull;
  return load_obj<uint64_t>(r->payload.data());
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = virtio::DriverMemory::create(kMemSize, kGuestBase);
    ASSERT_TRUE(m) << m.error().to_string();
    dmem_ = *m;
  }

  Result<std::optional<Reply>> send(Request r, std::vector<uint8_t> payload = {}, std::vector<UniqueFd> fds = {},
                                    uint32_t flags = kVersion) {
    RawMessage raw;
    raw.header = Header{static_cast<uint32_t>(r), flags, static_cast<uint32_t>(payload.size())};
    raw.payload = std::move(payload);
    raw.fds = std::move(fds);
    auto msg = decode(std::move(raw));
    if (!msg) return tl::unexpected(msg.error());
    return session_.handle(std::move(*msg));
  }
  Result<std::optional<Reply>> send_u64(Request r, uint64_t v, uint32_t flags = kVersion) {
    return send(r, bytes(v), {}, flags);
  }
  Result<std::optional<Reply>> send_state(Request r, uint32_t index, uint32_t num, uint32_t flags = kVersion) {
    return send(r, bytes(VringState{index, num}), {}, flags);
  }
  Result<std::optional<Reply>> send_fd(Request r, uint32_t index, int fd, uint32_t flags = kVersion) {
    std::vector<UniqueFd> fds;
    fds.emplace_back(::dup(fd));
    return send(r, bytes(uint64_t{index}), std::move(fds), flags);
  }

  // GET_FEATURES .. SET_FEATURES like QEMU, acking `pf` protocol features.
  void negotiate(uint64_t pf = kProtocolFeatures, bool with_protocol_bit = true) {
    auto f = send(Request::kGetFeatures);
    ASSERT_TRUE(f);
    const uint64_t offered = reply_u64(*f);
    ASSERT_TRUE(send(Request::kSetOwner));
    ASSERT_TRUE(send_u64(Request::kSetProtocolFeatures, pf));
    uint64_t want = offered & (EchoDevice::kFeatureVersion1 | EchoDevice::kFeatureEventIdx);
    if (with_protocol_bit) want |= kProtocolFeaturesBit;
    auto sf = send_u64(Request::kSetFeatures, want);
    ASSERT_TRUE(sf) << sf.error().to_string();
  }

  void set_mem_table() {
    MemoryTableHeader h{1, 0};
    auto p = bytes(h);
    auto d = bytes(MemRegionDesc{kGuestBase, kMemSize, kUserBase, 0});
    p.insert(p.end(), d.begin(), d.end());
    std::vector<UniqueFd> fds;
    fds.emplace_back(::dup(dmem_->fd()));
    auto r = send(Request::kSetMemTable, p, std::move(fds));
    ASSERT_TRUE(r) << r.error().to_string();
  }

  static uint64_t va(GuestAddr a) { return a.value - kGuestBase + kUserBase; }

  // SET_VRING_NUM/BASE/ADDR/CALL/KICK for queue q backed by a new DriverQueue.
  void start_ring(uint16_t q, bool enable = true, uint16_t size = 16) {
    auto dq = virtio::DriverQueue::create(dmem_, size, /*event_idx=*/true);
    ASSERT_TRUE(dq);
    queues_[q] = std::move(*dq);
    kick_[q] = make_eventfd();
    call_[q] = make_eventfd();
    const auto cfg = queues_[q]->device_config();
    ASSERT_TRUE(send_state(Request::kSetVringNum, q, size));
    ASSERT_TRUE(send_state(Request::kSetVringBase, q, 0));
    VringAddr a;
    a.index = q;
    a.desc_user_addr = va(cfg.desc);
    a.avail_user_addr = va(cfg.avail);
    a.used_user_addr = va(cfg.used);
    ASSERT_TRUE(send(Request::kSetVringAddr, bytes(a)));
    ASSERT_TRUE(send_fd(Request::kSetVringCall, q, call_[q].get()));
    auto k = send_fd(Request::kSetVringKick, q, kick_[q].get(), kVersion | kFlagNeedReply);
    ASSERT_TRUE(k);
    ASSERT_TRUE(*k);
    ASSERT_EQ(reply_u64(*k), 0u) << "SET_VRING_KICK refused";
    if (enable) {
      ASSERT_TRUE(send_state(Request::kSetVringEnable, q, 1));
    }
  }

  // Post one request: `in` readable bytes, `out_len` writable bytes. Returns head.
  struct Posted {
    uint16_t head;
    GuestAddr in, out;
  };
  Posted post(uint16_t q, std::vector<uint8_t> in, uint32_t out_len, bool kick = true) {
    auto a = dmem_->alloc(in.size());
    auto b = dmem_->alloc(out_len);
    EXPECT_TRUE(a && b);
    std::memcpy(dmem_->ptr(*a, in.size()), in.data(), in.size());
    std::memset(dmem_->ptr(*b, out_len), 0, out_len);
    virtio::Buffer bufs[2] = {{*a, static_cast<uint32_t>(in.size()), false}, {*b, out_len, true}};
    auto h = queues_[q]->add(bufs);
    EXPECT_TRUE(h);
    queues_[q]->publish();
    if (kick) kick_ring(q);
    return {h ? *h : uint16_t{0xffff}, *a, *b};
  }
  void kick_ring(uint16_t q) {
    uint64_t one = 1;
    ASSERT_EQ(::write(kick_[q].get(), &one, 8), 8);
  }
  // Waits for a completion on q (polls used ring; call fd is checked separately).
  std::optional<virtio::UsedElem> wait_used(uint16_t q, int timeout_ms = 5000) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto u = queues_[q]->get_used()) return u;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return std::nullopt;
  }

  EchoDevice dev_{2, 256};
  Session session_{dev_};
  std::shared_ptr<virtio::DriverMemory> dmem_;
  std::unique_ptr<virtio::DriverQueue> queues_[2];
  UniqueFd kick_[2], call_[2];
};

TEST_F(SessionTest, FeaturesOfferedAndMasked) {
  auto f = send(Request::kGetFeatures);
  ASSERT_TRUE(f);
  const uint64_t offered = reply_u64(*f);
  EXPECT_NE(offered & kProtocolFeaturesBit, 0u) << "bit 30 must be offered";
  EXPECT_EQ(offered & EchoDevice::kFeatureLogAll, 0u) << "VHOST_F_LOG_ALL must be masked";
  EXPECT_NE(offered & EchoDevice::kFeatureDevice5, 0u);
  auto pf = send(Request::kGetProtocolFeatures);
  ASSERT_TRUE(pf);
  EXPECT_EQ(reply_u64(*pf), kProtocolFeatures);
  for (auto bitn : {kPfMq, kPfReplyAck, kPfConfig, kPfConfigureMemSlots, kPfResetDevice}) {
    EXPECT_NE(reply_u64(*pf) & pf_bit(bitn), 0u) << bitn;
  }
  // Not offered -> acking it is a protocol violation.
  auto bad = send_u64(Request::kSetFeatures, offered | (1ull << 40));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kProtocol);
  auto badpf = send_u64(Request::kSetProtocolFeatures, pf_bit(kPfLogShmfd));
  ASSERT_FALSE(badpf);
  EXPECT_EQ(badpf.error().code, Errc::kProtocol);
  // Acked features reach the device without bit 30.
  ASSERT_TRUE(send_u64(Request::kSetFeatures, kProtocolFeaturesBit | EchoDevice::kFeatureVersion1));
  EXPECT_EQ(dev_.negotiated.load(), EchoDevice::kFeatureVersion1);
  EXPECT_EQ(session_.acked_features(), kProtocolFeaturesBit | EchoDevice::kFeatureVersion1);
}

TEST(SessionOptional, StatusOfferedOnlyWhenDeviceAsks) {
  EchoDevice dev;
  dev.extra_protocol_features = pf_bit(kPfStatus) | pf_bit(kPfLogShmfd);
  Session s(dev);
  EXPECT_EQ(s.offered_protocol_features(), kProtocolFeatures | pf_bit(kPfStatus));
}

TEST_F(SessionTest, ReplyAck) {
  // Without REPLY_ACK negotiated, NEED_REPLY gets no ack.
  auto r = send(Request::kSetOwner, {}, {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  EXPECT_FALSE(*r);
  ASSERT_TRUE(send_u64(Request::kSetProtocolFeatures, kProtocolFeatures));
  r = send(Request::kSetOwner, {}, {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  ASSERT_TRUE(*r);
  EXPECT_EQ((*r)->request, static_cast<uint32_t>(Request::kSetOwner));
  EXPECT_EQ(reply_u64(*r), 0u);
  // Refused request -> ack 1 and the session continues.
  r = send_state(Request::kSetVringNum, 0, 3, kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 1u);
  dev_.refuse_features = true;
  r = send_u64(Request::kSetFeatures, EchoDevice::kFeatureVersion1, kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 1u);
  EXPECT_EQ(session_.acked_features(), 0u);
  // Messages with their own reply are not acked in addition.
  r = send(Request::kGetQueueNum, {}, {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 2u);
}

TEST_F(SessionTest, QueueNumAndMemSlots) {
  auto r = send(Request::kGetQueueNum);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 2u);
  r = send(Request::kGetMaxMemSlots);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), kMaxMemSlots);
}

TEST_F(SessionTest, QueueIndexOutOfRangeIsProtocolError) {
  negotiate();
  for (Request req : {Request::kSetVringNum, Request::kSetVringBase, Request::kGetVringBase,
                      Request::kSetVringEnable}) {
    auto r = send_state(req, 2, 1);
    ASSERT_FALSE(r) << request_name(req);
    EXPECT_EQ(r.error().code, Errc::kProtocol);
  }
  VringAddr a;
  a.index = 7;
  EXPECT_FALSE(send(Request::kSetVringAddr, bytes(a)));
  auto efd = make_eventfd();
  EXPECT_FALSE(send_fd(Request::kSetVringKick, 200, efd.get()));
  EXPECT_FALSE(send_fd(Request::kSetVringCall, 2, efd.get()));
}

TEST_F(SessionTest, RingParametersValidated) {
  negotiate();
  const uint32_t nr = kVersion | kFlagNeedReply;
  EXPECT_EQ(reply_u64(*send_state(Request::kSetVringNum, 0, 0, nr)), 1u);
  EXPECT_EQ(reply_u64(*send_state(Request::kSetVringNum, 0, 24, nr)), 1u);   // not a power of two
  EXPECT_EQ(reply_u64(*send_state(Request::kSetVringNum, 0, 512, nr)), 1u);  // > max_queue_size
  EXPECT_EQ(reply_u64(*send_state(Request::kSetVringNum, 0, 256, nr)), 0u);
  EXPECT_EQ(reply_u64(*send_state(Request::kSetVringBase, 0, 0x10000, nr)), 1u);
  EXPECT_EQ(reply_u64(*send_state(Request::kSetVringEnable, 0, 2, nr)), 1u);
  VringAddr a;
  a.flags = kVringFLog;
  EXPECT_EQ(reply_u64(*send(Request::kSetVringAddr, bytes(a), {}, nr)), 1u);
  // Kick before memory table / address: refused, ring not started.
  auto efd = make_eventfd();
  EXPECT_EQ(reply_u64(*send_fd(Request::kSetVringKick, 0, efd.get(), nr)), 1u);
  EXPECT_FALSE(session_.ring_started(0));
  // Polling mode (no kick fd) is refused clearly.
  auto r = send(Request::kSetVringKick, bytes(uint64_t{kVringNoFdMask}), {}, nr);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 1u);
}

TEST_F(SessionTest, RingAddressOutsideMemoryRefused) {
  negotiate();
  set_mem_table();
  ASSERT_TRUE(send_state(Request::kSetVringNum, 0, 16));
  VringAddr a;
  a.desc_user_addr = 0x1000;  // not a front-end VA of any region
  a.avail_user_addr = kUserBase;
  a.used_user_addr = kUserBase + 0x1000;
  ASSERT_TRUE(send(Request::kSetVringAddr, bytes(a)));
  auto efd = make_eventfd();
  auto r = send_fd(Request::kSetVringKick, 0, efd.get(), kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 1u);
  EXPECT_FALSE(session_.ring_started(0));
}

TEST_F(SessionTest, ProcessesRequestsOnWorkerAndStopsOnGetVringBase) {
  negotiate();
  set_mem_table();
  start_ring(0);
  EXPECT_TRUE(session_.ring_started(0));
  for (int i = 0; i < 5; ++i) {
    auto p = post(0, {1, 2, 3, static_cast<uint8_t>(i)}, 8);
    auto u = wait_used(0);
    ASSERT_TRUE(u) << "no completion for request " << i;
    EXPECT_EQ(u->head, p.head);
    EXPECT_EQ(u->len, 4u);
    const uint8_t* out = dmem_->ptr(p.out, 8);
    EXPECT_EQ(out[0], 0xfe);
    EXPECT_EQ(out[3], static_cast<uint8_t>(~i));
    EXPECT_EQ(out[4], 0);
  }
  EXPECT_TRUE(wait_signalled(call_[0].get()));
  EXPECT_EQ(dev_.processed.load(), 5);
  EXPECT_EQ(dev_.started.load(), 1);  // queue_started ran (on the worker) before processing
  EXPECT_FALSE(dev_.process_on_foreign_thread.load());
  auto r = send_state(Request::kGetVringBase, 0, 0);
  ASSERT_TRUE(r);
  ASSERT_TRUE(*r);
  const auto st = load_obj<VringState>((*r)->payload.data());
  EXPECT_EQ(st.index, 0u);
  EXPECT_EQ(st.num, 5u);
  EXPECT_FALSE(session_.ring_started(0));
  EXPECT_EQ(dev_.stopped.load(), 1);
  // Stopped: a new request is not processed.
  post(0, {9}, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(dev_.processed.load(), 5);
}

// A hostile front-end overlaps the avail ring with the used ring and starts used->idx
// one ahead of VRING_BASE: every completion the device publishes (used->idx + 1) is
// then a new avail entry, so the ring is never empty. The worker must still see
// GET_VRING_BASE: passes are bounded (SplitQueue::set_pass_budget). Found by
// fuzz_vhost_session (a timeout in VringWorker::stop).
TEST_F(SessionTest, SelfFeedingRingDoesNotKeepTheWorkerFromStopping) {
  negotiate();
  set_mem_table();
  constexpr uint16_t kSize = 16;
  auto dq = virtio::DriverQueue::create(dmem_, kSize, /*event_idx=*/true);
  ASSERT_TRUE(dq);
  auto in = dmem_->alloc(4);
  auto out = dmem_->alloc(8);
  ASSERT_TRUE(in && out);
  virtio::Buffer bufs[2] = {{*in, 4, false}, {*out, 8, true}};
  auto head = (*dq)->add(bufs);  // descriptors only: nothing is published
  ASSERT_TRUE(head);
  ASSERT_EQ(*head, 0);  // the zeroed overlap reads as head 0
  const auto cfg = (*dq)->device_config();
  // The whole ring area, as the test sees it; used->idx (offset 2) starts at 1.
  uint8_t* ring = dmem_->ptr(cfg.used, 4 + 8 * kSize + 2);
  std::memset(ring, 0, 4 + 8 * kSize + 2);
  const uint16_t one = 1;
  std::memcpy(ring + 2, &one, 2);

  kick_[0] = make_eventfd();
  call_[0] = make_eventfd();
  ASSERT_TRUE(send_state(Request::kSetVringNum, 0, kSize));
  ASSERT_TRUE(send_state(Request::kSetVringBase, 0, 0));
  VringAddr a;
  a.index = 0;
  a.desc_user_addr = va(cfg.desc);
  a.avail_user_addr = va(cfg.used);  // the overlap
  a.used_user_addr = va(cfg.used);
  ASSERT_TRUE(send(Request::kSetVringAddr, bytes(a)));
  ASSERT_TRUE(send_fd(Request::kSetVringCall, 0, call_[0].get()));
  ASSERT_TRUE(send_fd(Request::kSetVringKick, 0, kick_[0].get()));
  ASSERT_TRUE(send_state(Request::kSetVringEnable, 0, 1));
  // Feeding itself: more completions than the ring holds.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (dev_.processed.load() + dev_.bad_chains.load() < 4 * kSize && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_GE(dev_.processed.load() + dev_.bad_chains.load(), 4 * kSize);

  auto stop = std::async(std::launch::async, [&] { return send_state(Request::kGetVringBase, 0, 0); });
  const bool stopped = stop.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  if (!stopped) {
    // Unstick the worker for teardown: an avail entry >= queue size breaks the ring.
    while (stop.wait_for(std::chrono::milliseconds(0)) != std::future_status::ready) {
      std::memset(ring + 4, 0xff, 2 * kSize);
    }
  }
  EXPECT_TRUE(stopped) << "GET_VRING_BASE did not return within 5 s: the worker never left its pass";
  auto r = stop.get();
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_FALSE(session_.ring_started(0));
}

TEST_F(SessionTest, RingStartsWithoutKickAndRestartsFromBase) {
  negotiate();
  set_mem_table();
  ASSERT_NO_FATAL_FAILURE(start_ring(0, /*enable=*/false));
  // Work queued before the ring is enabled is found without any kick.
  auto p = post(0, {7}, 1, /*kick=*/false);
  ASSERT_TRUE(send_state(Request::kSetVringEnable, 0, 1));
  auto u = wait_used(0);
  ASSERT_TRUE(u);
  EXPECT_EQ(u->head, p.head);
  auto r = send_state(Request::kGetVringBase, 0, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(load_obj<VringState>((*r)->payload.data()).num, 1u);
  // Restart with a new kick fd: continues at avail index 1.
  kick_[0] = make_eventfd();
  ASSERT_TRUE(send_fd(Request::kSetVringKick, 0, kick_[0].get()));
  EXPECT_TRUE(session_.ring_started(0));
  post(0, {8}, 1);
  ASSERT_TRUE(wait_used(0));
  r = send_state(Request::kGetVringBase, 0, 0);
  EXPECT_EQ(load_obj<VringState>((*r)->payload.data()).num, 2u);
}

TEST_F(SessionTest, DisabledRingIsNotProcessedUntilEnabled) {
  negotiate();  // protocol features acked: rings start disabled
  set_mem_table();
  start_ring(0, /*enable=*/false);
  EXPECT_TRUE(session_.ring_started(0));
  EXPECT_FALSE(session_.ring_enabled(0));
  post(0, {1}, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(dev_.processed.load(), 0);
  ASSERT_TRUE(send_state(Request::kSetVringEnable, 0, 1));
  ASSERT_TRUE(wait_used(0));
  EXPECT_EQ(dev_.processed.load(), 1);
}

TEST_F(SessionTest, WithoutProtocolFeatureBitRingsAreEnabledAtStart) {
  negotiate(kProtocolFeatures, /*with_protocol_bit=*/false);
  set_mem_table();
  start_ring(1, /*enable=*/false);
  EXPECT_TRUE(session_.ring_enabled(1));
  post(1, {1, 2}, 2);
  ASSERT_TRUE(wait_used(1));
}

TEST_F(SessionTest, GetVringBaseDrainsInFlightRequests) {
  dev_.deferred = true;
  negotiate();
  set_mem_table();
  start_ring(0);
  std::vector<Posted> posted;
  for (int i = 0; i < 3; ++i) posted.push_back(post(0, {static_cast<uint8_t>(i)}, 1));
  // Deferred: popped but not completed.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(queues_[0]->has_used());
  auto r = send_state(Request::kGetVringBase, 0, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(load_obj<VringState>((*r)->payload.data()).num, 3u);
  // By the time GET_VRING_BASE replied, every in-flight request is in the used ring.
  EXPECT_EQ(dev_.drained.load(), 3);
  for (int i = 0; i < 3; ++i) {
    auto u = queues_[0]->get_used();
    ASSERT_TRUE(u);
    EXPECT_EQ(u->len, 1u);
  }
  EXPECT_EQ(*dmem_->ptr(posted[2].out), static_cast<uint8_t>(~2));
}

TEST_F(SessionTest, CallFdCanBeSwappedWhileRunning) {
  negotiate();
  set_mem_table();
  start_ring(0);
  queues_[0]->enable_interrupts();
  post(0, {1}, 1);
  ASSERT_TRUE(wait_used(0));
  ASSERT_TRUE(wait_signalled(call_[0].get()));
  auto new_call = make_eventfd();
  ASSERT_TRUE(send_fd(Request::kSetVringCall, 0, new_call.get()));
  queues_[0]->enable_interrupts();
  post(0, {2}, 1);
  ASSERT_TRUE(wait_used(0));
  EXPECT_TRUE(wait_signalled(new_call.get()));
  EXPECT_FALSE(wait_signalled(call_[0].get(), 50)) << "old call fd must not be signalled any more";
}

TEST_F(SessionTest, BrokenQueueSignalsErrFdAndParks) {
  negotiate();
  set_mem_table();
  auto err = make_eventfd();
  ASSERT_TRUE(send_fd(Request::kSetVringErr, 0, err.get()));
  dev_.fail_process = true;
  start_ring(0);
  EXPECT_TRUE(wait_signalled(err.get()));
  // The session still answers and can stop the ring.
  ASSERT_TRUE(send_state(Request::kGetVringBase, 0, 0));
  EXPECT_FALSE(session_.ring_started(0));
}

TEST_F(SessionTest, MemoryRegionsAddRemove) {
  negotiate();
  set_mem_table();
  auto extra = virtio::DriverMemory::create(0x10000, 0x40000000);
  ASSERT_TRUE(extra);
  SingleMemRegion reg{0, MemRegionDesc{0x40000000, 0x10000, 0x7e0000000000, 0}};
  std::vector<UniqueFd> fds;
  fds.emplace_back(::dup((*extra)->fd()));
  auto r = send(Request::kAddMemReg, bytes(reg), std::move(fds), kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 0u);
  ASSERT_EQ(session_.memory()->regions().size(), 2u);
  // The device sees the bytes the driver wrote.
  (*extra)->ptr(GuestAddr{0x40000010})[0] = 0x5a;
  uint8_t b = 0;
  ASSERT_TRUE(session_.memory()->read(GuestAddr{0x40000010}, {&b, 1}));
  EXPECT_EQ(b, 0x5a);
  // Overlapping region refused.
  SingleMemRegion overlap{0, MemRegionDesc{0x40008000, 0x10000, 0x7d0000000000, 0}};
  fds.clear();
  fds.emplace_back(::dup((*extra)->fd()));
  r = send(Request::kAddMemReg, bytes(overlap), std::move(fds), kVersion | kFlagNeedReply);
  EXPECT_EQ(reply_u64(*r), 1u);
  // Region larger than the file refused (would SIGBUS on access).
  SingleMemRegion too_big{0, MemRegionDesc{0x80000000, 0x100000, 0x7c0000000000, 0}};
  fds.clear();
  fds.emplace_back(::dup((*extra)->fd()));
  r = send(Request::kAddMemReg, bytes(too_big), std::move(fds), kVersion | kFlagNeedReply);
  EXPECT_EQ(reply_u64(*r), 1u);
  EXPECT_EQ(session_.memory()->regions().size(), 2u);
  // Remove it; removing an unknown region is refused.
  r = send(Request::kRemMemReg, bytes(reg), {}, kVersion | kFlagNeedReply);
  EXPECT_EQ(reply_u64(*r), 0u);
  EXPECT_EQ(session_.memory()->regions().size(), 1u);
  r = send(Request::kRemMemReg, bytes(reg), {}, kVersion | kFlagNeedReply);
  EXPECT_EQ(reply_u64(*r), 1u);
}

TEST_F(SessionTest, MemoryTableChangeReachesRunningWorker) {
  negotiate();
  set_mem_table();
  start_ring(0);
  post(0, {1}, 1);
  ASSERT_TRUE(wait_used(0));
  // Replace the table with the same memory plus a second region, while running.
  auto extra = virtio::DriverMemory::create(0x10000, 0x40000000);
  ASSERT_TRUE(extra);
  SingleMemRegion reg{0, MemRegionDesc{0x40000000, 0x10000, 0x7e0000000000, 0}};
  std::vector<UniqueFd> fds;
  fds.emplace_back(::dup((*extra)->fd()));
  ASSERT_TRUE(send(Request::kAddMemReg, bytes(reg), std::move(fds)));
  // A request whose output buffer lives in the new region is processed.
  virtio::Buffer bufs[2] = {{*dmem_->alloc(1), 1, false}, {GuestAddr{0x40000100}, 1, true}};
  *dmem_->ptr(bufs[0].addr) = 0x0f;
  ASSERT_TRUE(queues_[0]->add(bufs));
  queues_[0]->publish();
  kick_ring(0);
  auto u = wait_used(0);
  ASSERT_TRUE(u);
  EXPECT_EQ(u->len, 1u);
  EXPECT_EQ(*(*extra)->ptr(GuestAddr{0x40000100}), 0xf0);
}

// Unsealed memory accepted by the device, then shrunk by the front-end under a
// request's buffer: the SIGBUS is contained, the ring stops and signals
// poisoned_fd(), and the session refuses every later message (the connection closes).
TEST_F(SessionTest, ShrunkUnsealedMemoryPoisonsTheSession) {
  dev_.accept_unsealed = true;
  negotiate();
  set_mem_table();
  start_ring(0);
  post(0, {1}, 1);
  ASSERT_TRUE(wait_used(0));
  constexpr uint64_t kExtra = 0x10000, kExtraBase = 0x40000000;
  UniqueFd mem(::memfd_create("unsealed-guest", MFD_CLOEXEC));
  ASSERT_TRUE(mem);
  ASSERT_EQ(::ftruncate(mem.get(), kExtra), 0);
  SingleMemRegion reg{0, MemRegionDesc{kExtraBase, kExtra, 0x7e0000000000, 0}};
  std::vector<UniqueFd> fds;
  fds.emplace_back(::dup(mem.get()));
  auto r = send(Request::kAddMemReg, bytes(reg), std::move(fds), kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  ASSERT_EQ(reply_u64(*r), 0u) << "unsealed memory refused";
  const uint64_t faults = memory::fault_guard::contained_faults();
  EXPECT_FALSE(session_.poisoned());

  // The cut, then a request whose output buffer lies in the cut part.
  ASSERT_EQ(::ftruncate(mem.get(), 0x1000), 0);
  virtio::Buffer bufs[2] = {{*dmem_->alloc(1), 1, false}, {GuestAddr{kExtraBase + 0x8000}, 1, true}};
  *dmem_->ptr(bufs[0].addr) = 0x0f;
  ASSERT_TRUE(queues_[0]->add(bufs));
  queues_[0]->publish();
  kick_ring(0);
  ASSERT_TRUE(wait_signalled(session_.poisoned_fd())) << "the ring did not report the poisoned memory";
  EXPECT_TRUE(session_.poisoned());
  EXPECT_GT(memory::fault_guard::contained_faults(), faults);
  // Whatever the front-end sends next ends the connection.
  auto next = send(Request::kGetFeatures);
  ASSERT_FALSE(next);
  EXPECT_EQ(next.error().code, Errc::kProtocol);
  EXPECT_NE(next.error().message.find("shrank its guest memory"), std::string::npos)
      << next.error().message;
}

TEST_F(SessionTest, GetConfigSubRangesAndErrors) {
  negotiate();
  auto get = [&](uint32_t off, uint32_t size) {
    auto p = bytes(ConfigHeader{off, size, 0});
    p.resize(p.size() + size);
    auto r = send(Request::kGetConfig, p);
    EXPECT_TRUE(r && *r);
    return (*r)->payload;
  };
  const auto full = dev_.config_snapshot();
  for (auto [off, size] : {std::pair{0u, 64u}, {0u, 1u}, {10u, 7u}, {63u, 1u}, {20u, 44u}}) {
    auto p = get(off, size);
    ASSERT_EQ(p.size(), 12u + size);
    const auto h = load_obj<ConfigHeader>(p.data());
    EXPECT_EQ(h.offset, off);
    EXPECT_EQ(h.size, size);
    EXPECT_TRUE(std::equal(p.begin() + 12, p.end(), full.begin() + off)) << off << "+" << size;
  }
  EXPECT_TRUE(get(0, 65).empty());
  EXPECT_TRUE(get(64, 1).empty());
  EXPECT_TRUE(get(0xffffffff, 2).empty());
}

TEST_F(SessionTest, GetConfigWithoutNegotiationIsError) {
  auto p = bytes(ConfigHeader{0, 4, 0});
  p.resize(16);
  auto r = send(Request::kGetConfig, p);
  ASSERT_TRUE(r && *r);
  EXPECT_TRUE((*r)->payload.empty());
}

TEST_F(SessionTest, SetConfigRespectsDevice) {
  negotiate();
  const uint32_t nr = kVersion | kFlagNeedReply;
  auto set = [&](uint32_t off, std::vector<uint8_t> data, uint32_t flags) {
    auto p = bytes(ConfigHeader{off, static_cast<uint32_t>(data.size()), flags});
    p.insert(p.end(), data.begin(), data.end());
    return reply_u64(*send(Request::kSetConfig, p, {}, nr));
  };
  EXPECT_EQ(set(16, {9, 9}, 0), 0u);
  EXPECT_EQ(set(0, {9}, 0), 1u);  // read-only byte
  EXPECT_EQ(set(0, {9}, kConfigFlagMigration), 0u);
  auto c = dev_.config_snapshot();
  EXPECT_EQ(c[16], 9);
  EXPECT_EQ(c[0], 9);
}

TEST_F(SessionTest, ResetDeviceStopsRingsAndResetsDevice) {
  negotiate();
  set_mem_table();
  start_ring(0);
  start_ring(1);
  ASSERT_TRUE(send(Request::kResetDevice));
  EXPECT_FALSE(session_.ring_started(0));
  EXPECT_FALSE(session_.ring_started(1));
  EXPECT_EQ(dev_.resets.load(), 1);
  EXPECT_EQ(dev_.stopped.load(), 2);
  EXPECT_EQ(session_.acked_features(), 0u);
  EXPECT_TRUE(session_.owner());  // ownership retained
  // Rings must be set up again before they can start.
  auto efd = make_eventfd();
  auto r = send_fd(Request::kSetVringKick, 0, efd.get(), kVersion | kFlagNeedReply);
  EXPECT_EQ(reply_u64(*r), 1u);
}

TEST_F(SessionTest, ResetDeviceAndStatusNeedNegotiation) {
  negotiate(pf_bit(kPfReplyAck));
  auto r = send(Request::kResetDevice);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kProtocol);
  EXPECT_FALSE(send_u64(Request::kSetStatus, 0xf));
  EXPECT_FALSE(send(Request::kGetStatus));
}

TEST(SessionStatus, SetStatusZeroResets) {
  EchoDevice dev;
  dev.extra_protocol_features = pf_bit(kPfStatus);
  Session s(dev);
  auto run = [&](Request r, std::vector<uint8_t> p) {
    RawMessage raw;
    raw.header = Header{static_cast<uint32_t>(r), kVersion, static_cast<uint32_t>(p.size())};
    raw.payload = std::move(p);
    auto m = decode(std::move(raw));
    EXPECT_TRUE(m);
    return s.handle(std::move(*m));
  };
  ASSERT_TRUE(run(Request::kSetProtocolFeatures, bytes(uint64_t{pf_bit(kPfStatus)})));
  ASSERT_TRUE(run(Request::kSetStatus, bytes(uint64_t{0xf})));
  auto g = run(Request::kGetStatus, {});
  ASSERT_TRUE(g && *g);
  EXPECT_EQ(load_obj<uint64_t>((*g)->payload.data()), 0xfu);
  ASSERT_TRUE(run(Request::kSetStatus, bytes(uint64_t{0})));
  EXPECT_EQ(dev.resets.load(), 1);
}

TEST_F(SessionTest, CloseStopsRingsAndResetsDeviceOnce) {
  negotiate();
  set_mem_table();
  start_ring(0);
  session_.close();
  session_.close();
  EXPECT_FALSE(session_.ring_started(0));
  EXPECT_EQ(dev_.resets.load(), 1);
  EXPECT_EQ(dev_.stopped.load(), 1);
}

TEST_F(SessionTest, SetFeaturesChangeWhileRunningRefused) {
  negotiate();
  set_mem_table();
  start_ring(0);
  auto r = send_u64(Request::kSetFeatures, kProtocolFeaturesBit, kVersion | kFlagNeedReply);
  ASSERT_TRUE(r);
  EXPECT_EQ(reply_u64(*r), 1u);
  // Same features again is fine.
  r = send_u64(Request::kSetFeatures, session_.acked_features(), kVersion | kFlagNeedReply);
  EXPECT_EQ(reply_u64(*r), 0u);
}

// ---- INFLIGHT_SHMFD ----------------------------------------------------------

UniqueFd sealed_memfd(uint64_t size, unsigned seals) {
  UniqueFd fd(::memfd_create("inflight-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  if (seals != 0) {
    EXPECT_EQ(::fcntl(fd.get(), F_ADD_SEALS, seals), 0);
  }
  return fd;
}

TEST_F(SessionTest, GetInflightFdGivesASealedZeroedRegion) {
  negotiate();
  ASSERT_NE(session_.acked_protocol_features() & pf_bit(kPfInflightShmfd), 0u)
      << "offered by default";
  auto r = send(Request::kGetInflightFd, bytes(InflightDesc{0, 0, 2, 16, 0}));
  ASSERT_TRUE(r && *r) << (r ? "" : r.error().to_string());
  ASSERT_EQ((*r)->payload.size(), sizeof(InflightDesc));
  const auto d = load_obj<InflightDesc>((*r)->payload.data());
  EXPECT_EQ(d.mmap_size, 2 * virtio::inflight_queue_bytes(16));
  EXPECT_EQ(d.mmap_offset, 0u);
  EXPECT_EQ(d.num_queues, 2);
  EXPECT_EQ(d.queue_size, 16);
  const int fd = (*r)->fd.get();
  ASSERT_GE(fd, 0);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), d.mmap_size);
  const int seals = ::fcntl(fd, F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_NE(::ftruncate(fd, 64), 0) << "nobody can shrink it";
  // Bad geometry: mmap_size 0 (QEMU then goes on without inflight tracking).
  for (auto bad : {InflightDesc{0, 0, 3, 16, 0}, InflightDesc{0, 0, 0, 16, 0},
                   InflightDesc{0, 0, 1, 12, 0}, InflightDesc{0, 0, 1, 512, 0}}) {
    auto e = send(Request::kGetInflightFd, bytes(bad));
    ASSERT_TRUE(e && *e);
    EXPECT_EQ(load_obj<InflightDesc>((*e)->payload.data()).mmap_size, 0u);
    EXPECT_FALSE((*e)->fd.valid());
  }
}

TEST_F(SessionTest, InflightNeedsNegotiation) {
  negotiate(kProtocolFeatures & ~pf_bit(kPfInflightShmfd));
  auto r = send(Request::kGetInflightFd, bytes(InflightDesc{0, 0, 1, 16, 0}));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kProtocol);
  std::vector<UniqueFd> fds;
  fds.push_back(sealed_memfd(4096, F_SEAL_SHRINK));
  auto s = send(Request::kSetInflightFd, bytes(InflightDesc{4096, 0, 1, 16, 0}), std::move(fds));
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, Errc::kProtocol);
}

TEST_F(SessionTest, SetInflightFdValidatesWhatTheFrontEndSends) {
  negotiate();
  const uint64_t need = virtio::inflight_queue_bytes(16);
  auto set = [&](InflightDesc d, UniqueFd fd) {
    std::vector<UniqueFd> fds;
    fds.push_back(std::move(fd));
    auto r = send(Request::kSetInflightFd, bytes(d), std::move(fds), kVersion | kFlagNeedReply);
    EXPECT_TRUE(r);
    return r ? reply_u64(*r) : ~0ull;
  };
  EXPECT_EQ(set({need - 64, 0, 1, 16, 0}, sealed_memfd(need, F_SEAL_SHRINK)), 1u)
      << "region too small";
  EXPECT_EQ(set({need, 0, 3, 16, 0}, sealed_memfd(3 * need, F_SEAL_SHRINK)), 1u)
      << "more queues than the device";
  EXPECT_EQ(set({need, 0, 1, 24, 0}, sealed_memfd(need, F_SEAL_SHRINK)), 1u)
      << "queue size not a power of two";
  EXPECT_EQ(set({need, 0, 1, 16, 0}, sealed_memfd(need, 0)), 1u) << "unsealed: could shrink later";
  EXPECT_EQ(set({need, 0, 1, 16, 0}, sealed_memfd(need / 2, F_SEAL_SHRINK)), 1u)
      << "file smaller than the region";
  EXPECT_EQ(set({need, 4, 1, 16, 0}, sealed_memfd(need + 4096, F_SEAL_SHRINK)), 1u)
      << "misaligned offset";
  EXPECT_EQ(set({~0ull - 8, 4096, 1, 16, 0}, sealed_memfd(need, F_SEAL_SHRINK)), 1u) << "overflow";
  {
    std::vector<UniqueFd> fds;
    fds.push_back(make_eventfd());
    auto r = send(Request::kSetInflightFd, bytes(InflightDesc{need, 0, 1, 16, 0}), std::move(fds),
                  kVersion | kFlagNeedReply);
    ASSERT_TRUE(r);
    EXPECT_EQ(reply_u64(*r), 1u) << "not a memory file";
  }
  // A good one, and then a ring of another size is refused at start.
  EXPECT_EQ(set({need, 0, 1, 16, 0}, sealed_memfd(need, F_SEAL_SHRINK | F_SEAL_GROW)), 0u);
  set_mem_table();
  auto dq = virtio::DriverQueue::create(dmem_, 32, true);
  ASSERT_TRUE(dq);
  const auto cfg = (*dq)->device_config();
  ASSERT_TRUE(send_state(Request::kSetVringNum, 0, 32));
  VringAddr a;
  a.desc_user_addr = va(cfg.desc);
  a.avail_user_addr = va(cfg.avail);
  a.used_user_addr = va(cfg.used);
  ASSERT_TRUE(send(Request::kSetVringAddr, bytes(a)));
  auto kick = make_eventfd();
  auto k = send_fd(Request::kSetVringKick, 0, kick.get(), kVersion | kFlagNeedReply);
  ASSERT_TRUE(k);
  EXPECT_EQ(reply_u64(*k), 1u) << "ring size 32 against a region for 16";
  EXPECT_FALSE(session_.ring_started(0));
  // Once rings run, the region cannot be replaced.
  start_ring(0);
  EXPECT_EQ(set({need, 0, 1, 16, 0}, sealed_memfd(need, F_SEAL_SHRINK)), 1u) << "rings running";
}

TEST_F(SessionTest, InflightRegionMarksPoppedHeads) {
  negotiate();
  auto g = send(Request::kGetInflightFd, bytes(InflightDesc{0, 0, 1, 16, 0}));
  ASSERT_TRUE(g && *g && (*g)->fd.valid());
  const auto d = load_obj<InflightDesc>((*g)->payload.data());
  UniqueFd region(::dup((*g)->fd.get()));
  auto hand_over = [&](Session& s) {
    RawMessage raw;
    raw.header =
        Header{static_cast<uint32_t>(Request::kSetInflightFd), kVersion, sizeof(InflightDesc)};
    raw.payload = bytes(d);
    raw.fds.emplace_back(::dup(region.get()));
    auto m = decode(std::move(raw));
    ASSERT_TRUE(m);
    auto r = s.handle(std::move(*m));
    ASSERT_TRUE(r) << r.error().to_string();
  };
  hand_over(session_);
  set_mem_table();
  dev_.deferred = true;  // pops and holds every chain: all in flight
  start_ring(0);
  post(0, {1}, 1);
  post(0, {2}, 1);
  for (int i = 0; i < 500 && dev_.deferred_chains.load() < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(dev_.deferred_chains.load(), 2);
  auto* map =
      static_cast<uint8_t*>(::mmap(nullptr, d.mmap_size, PROT_READ, MAP_SHARED, region.get(), 0));
  ASSERT_NE(map, MAP_FAILED);
  const auto* desc =
      reinterpret_cast<const virtio::InflightDescState*>(map + sizeof(virtio::InflightQueueHeader));
  int marked = 0;
  for (int i = 0; i < 16; ++i) marked += desc[i].inflight;
  EXPECT_EQ(marked, 2) << "both popped heads are marked inflight";
  ::munmap(map, d.mmap_size);
}

TEST_F(SessionTest, SetVringCallSignalsTheNewFdOnce) {
  negotiate();
  auto call = make_eventfd();
  ASSERT_TRUE(send_fd(Request::kSetVringCall, 0, call.get()));
  EXPECT_TRUE(wait_signalled(call.get(), 1000)) << "a guest that missed an interrupt must wake up";
  EXPECT_FALSE(wait_signalled(call.get(), 50)) << "once";
}

}  // namespace
}  // namespace iceblk::vhost_user
