// vhost-user end to end over a real unix socket: Server + EchoDevice on one side,
// vhost_user::Frontend + DriverQueue in memfd memory on the other. Also raw socket
// writes for malformed input: each bad connection is closed, the server goes on.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "virtio/driver_queue.h"
#include "vhost_user/frontend.h"
#include "unit/vhost_user/echo_device.h"
#include "vhost_user/server.h"
#include "support/temp_dir.h"
#include "support/socket.h"
#include "support/wait.h"

namespace iceblk {
namespace {

namespace vu = vhost_user;
using vhost_user::Frontend;
using vu::testing::EchoDevice;

constexpr uint64_t kGuestBase = 0x100000;
constexpr uint64_t kMemSize = 1 << 20;
constexpr uint64_t kWanted = EchoDevice::kFeatureVersion1 | EchoDevice::kFeatureEventIdx;

UniqueFd make_eventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

bool wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

bool wait_signalled(int fd, int timeout_ms = 5000) {
  if (!wait_readable(fd, timeout_ms)) return false;
  uint64_t v;
  return ::read(fd, &v, sizeof v) == sizeof v;
}

using test::eventually;

// Raw unix socket clients for malformed input (support/socket.h).
using test::raw_connect;
using test::raw_send;

// True when the server closed the connection (EOF) within the timeout.
bool server_closed(int fd, int timeout_ms = 5000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (!wait_readable(fd, 100)) continue;
    char buf[256];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
  }
  return false;
}

class VhostUserIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = iceblk::test::make_temp_dir("iceblk-vhost");
    ASSERT_FALSE(dir_.empty());
    path_ = dir_ + "/vhost.sock";
    auto s = vu::Server::create(path_, dev_);
    ASSERT_TRUE(s) << s.error().to_string();
    server_ = std::move(*s);
    thread_ = std::thread([this] { run_status_ = server_->run(); });
  }
  void TearDown() override {
    if (server_) server_->shutdown();
    if (thread_.joinable()) thread_.join();
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<vhost_user::Frontend> connect() {
    auto f = vhost_user::Frontend::connect(path_, vhost_user::Frontend::Options{5000});
    EXPECT_TRUE(f) << f.error().to_string();
    return f ? std::move(*f) : nullptr;
  }

  // A driver with memory, handshake done, `nq` rings running.
  struct Driver {
    std::unique_ptr<vhost_user::Frontend> fe;
    std::shared_ptr<virtio::DriverMemory> mem;
    std::vector<std::unique_ptr<virtio::DriverQueue>> queues;
    std::vector<UniqueFd> kick, call;
  };
  void bring_up(Driver& d, uint16_t nq, uint64_t pf = vu::kProtocolFeatures) {
    d.fe = connect();
    ASSERT_TRUE(d.fe);
    auto n = d.fe->handshake(kWanted, pf);
    ASSERT_TRUE(n) << n.error().to_string();
    auto m = virtio::DriverMemory::create(kMemSize, kGuestBase);
    ASSERT_TRUE(m);
    d.mem = *m;
    const auto r = d.mem->region();
    vhost_user::SharedRegion sr{r.guest_addr, r.size, r.user_addr, 0, d.mem->fd()};
    auto st = d.fe->set_mem_table(std::span<const vhost_user::SharedRegion>(&sr, 1));
    ASSERT_TRUE(st) << st.error().to_string();
    for (uint16_t q = 0; q < nq; ++q) {
      auto dq = virtio::DriverQueue::create(d.mem, 32, (n->features & EchoDevice::kFeatureEventIdx) != 0);
      ASSERT_TRUE(dq);
      d.queues.push_back(std::move(*dq));
      d.kick.push_back(make_eventfd());
      d.call.push_back(make_eventfd());
      const auto cfg = d.queues.back()->device_config();
      vhost_user::VringSetup vs;
      vs.size = 32;
      vs.desc_user_addr = cfg.desc.value;  // user_addr == guest address for DriverMemory
      vs.avail_user_addr = cfg.avail.value;
      vs.used_user_addr = cfg.used.value;
      vs.kick_fd = d.kick.back().get();
      vs.call_fd = d.call.back().get();
      auto s = d.fe->setup_vring(q, vs);
      ASSERT_TRUE(s) << s.error().to_string();
    }
  }

  // One echo request on queue q; checks the inverted bytes come back.
  void echo(Driver& d, uint16_t q, uint8_t seed, size_t len = 64) {
    auto in = d.mem->alloc(len);
    auto out = d.mem->alloc(len);
    ASSERT_TRUE(in && out);
    for (size_t i = 0; i < len; ++i) d.mem->ptr(*in, len)[i] = static_cast<uint8_t>(seed + i);
    virtio::Buffer bufs[2] = {{*in, static_cast<uint32_t>(len), false}, {*out, static_cast<uint32_t>(len), true}};
    auto h = d.queues[q]->add(bufs);
    ASSERT_TRUE(h);
    d.queues[q]->publish();
    d.queues[q]->enable_interrupts();
    if (d.queues[q]->needs_kick()) {
      uint64_t one = 1;
      ASSERT_EQ(::write(d.kick[q].get(), &one, 8), 8);
    }
    std::optional<virtio::UsedElem> u;
    ASSERT_TRUE(eventually([&] { return (u = d.queues[q]->get_used()).has_value() || (wait_signalled(d.call[q].get(), 50), false); }));
    EXPECT_EQ(u->head, *h);
    EXPECT_EQ(u->len, len);
    for (size_t i = 0; i < len; ++i) {
      ASSERT_EQ(d.mem->ptr(*out, len)[i], static_cast<uint8_t>(~(seed + i))) << i;
    }
    d.mem->free(*in);
    d.mem->free(*out);
  }

  // After a bad connection: a well-behaved front-end is still served.
  void expect_server_healthy() {
    auto fe = connect();
    ASSERT_TRUE(fe);
    auto f = fe->get_features();
    ASSERT_TRUE(f) << f.error().to_string();
    EXPECT_NE(*f & vu::kProtocolFeaturesBit, 0u);
  }

  EchoDevice dev_{2, 256};
  std::string dir_, path_;
  std::unique_ptr<vu::Server> server_;
  std::thread thread_;
  Status run_status_;
};

TEST_F(VhostUserIntegration, FullHandshakeAndIoOnTwoQueues) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 2));
  EXPECT_EQ(d.fe->acked_features() & kWanted, kWanted);
  EXPECT_TRUE(d.fe->reply_ack());
  std::thread t1([&] {
    for (int i = 0; i < 50; ++i) echo(d, 1, static_cast<uint8_t>(i * 7));
  });
  for (int i = 0; i < 50; ++i) echo(d, 0, static_cast<uint8_t>(i));
  t1.join();
  EXPECT_EQ(dev_.processed.load(), 100);
  auto b0 = d.fe->get_vring_base(0);
  auto b1 = d.fe->get_vring_base(1);
  ASSERT_TRUE(b0 && b1);
  EXPECT_EQ(*b0, 50);
  EXPECT_EQ(*b1, 50);
  auto qn = d.fe->get_queue_num();
  ASSERT_TRUE(qn);
  EXPECT_EQ(*qn, 2u);
}

TEST_F(VhostUserIntegration, GetConfigSubRangesAndOutOfRange) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 0));
  const auto full = dev_.config_snapshot();
  for (auto [off, size] : {std::pair{0u, 64u}, {4u, 8u}, {63u, 1u}, {32u, 0u}}) {
    auto c = d.fe->get_config(off, size);
    ASSERT_TRUE(c) << c.error().to_string();
    ASSERT_EQ(c->size(), size);
    EXPECT_TRUE(std::equal(c->begin(), c->end(), full.begin() + off));
  }
  for (auto [off, size] : {std::pair{0u, 65u}, {64u, 1u}, {60u, 8u}, {0xfffffff0u, 32u}}) {
    auto c = d.fe->get_config(off, size);
    ASSERT_FALSE(c) << off << "+" << size;
    EXPECT_EQ(c.error().code, Errc::kOutOfRange);
    EXPECT_NE(c.error().message.find("GET_CONFIG"), std::string::npos);
  }
  // The connection is still usable after the error replies.
  auto c = d.fe->get_config(0, 4);
  ASSERT_TRUE(c);
  // SET_CONFIG through the front-end: writable bytes accepted, read-only refused (ack 1).
  const uint8_t v[2] = {0xaa, 0xbb};
  EXPECT_TRUE(d.fe->set_config(16, v));
  auto bad = d.fe->set_config(0, v);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(dev_.config_snapshot()[16], 0xaa);
}

TEST_F(VhostUserIntegration, ReplyAckReportsWhichMessageFailed) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 0));
  ASSERT_TRUE(d.fe->reply_ack());
  auto s = d.fe->set_vring_num(0, 3);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, Errc::kInvalidArgument);
  EXPECT_NE(s.error().message.find("SET_VRING_NUM"), std::string::npos) << s.error().message;
  s = d.fe->set_vring_kick(0, -1);  // polling mode: refused
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("SET_VRING_KICK"), std::string::npos);
  EXPECT_TRUE(d.fe->set_vring_num(0, 16));
  // Without REPLY_ACK the same refusal is silent (and the connection survives).
  Driver d2;
  d.fe.reset();
  ASSERT_NO_FATAL_FAILURE(bring_up(d2, 0, vu::kProtocolFeatures & ~vu::pf_bit(vu::kPfReplyAck)));
  EXPECT_FALSE(d2.fe->reply_ack());
  EXPECT_TRUE(d2.fe->set_vring_num(0, 3));
  EXPECT_TRUE(d2.fe->get_features());
}

TEST_F(VhostUserIntegration, ReconnectResetsDeviceAndServesAgain) {
  {
    Driver d;
    ASSERT_NO_FATAL_FAILURE(bring_up(d, 1));
    echo(d, 0, 1);
    ASSERT_TRUE(d.fe->set_config(16, std::vector<uint8_t>{0x11}));
  }  // front-end disconnects with the ring running
  ASSERT_TRUE(eventually([&] { return dev_.resets.load() == 1; }));
  EXPECT_EQ(dev_.stopped.load(), 1);
  EXPECT_NE(dev_.config_snapshot()[16], 0x11) << "reset restores the config space";
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 1));
  echo(d, 0, 2);
  EXPECT_EQ(server_->connections_accepted(), 2u);
  auto base = d.fe->get_vring_base(0);
  ASSERT_TRUE(base);
  EXPECT_EQ(*base, 1) << "new connection starts its ring from base 0";
}

TEST_F(VhostUserIntegration, ResetDeviceThroughFrontend) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 1));
  echo(d, 0, 3);
  ASSERT_TRUE(d.fe->reset_device());
  EXPECT_EQ(dev_.resets.load(), 1);
  EXPECT_EQ(dev_.stopped.load(), 1);
}

TEST_F(VhostUserIntegration, GarbageBytesCloseOnlyThatConnection) {
  std::mt19937 rng(7);
  for (int round = 0; round < 3; ++round) {
    auto s = raw_connect(path_);
    ASSERT_TRUE(s.valid());
    std::vector<uint8_t> junk(200);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    raw_send(s.get(), junk.data(), junk.size());
    EXPECT_TRUE(server_closed(s.get())) << "round " << round;
  }
  expect_server_healthy();
}

TEST_F(VhostUserIntegration, TruncatedHeaderClosesConnection) {
  auto s = raw_connect(path_);
  const uint8_t part[7] = {1, 0, 0, 0, 1, 0, 0};
  raw_send(s.get(), part, sizeof part);
  ::shutdown(s.get(), SHUT_WR);
  EXPECT_TRUE(server_closed(s.get()));
  expect_server_healthy();
}

TEST_F(VhostUserIntegration, HugeSizeClosesConnection) {
  auto s = raw_connect(path_);
  vu::Header h{static_cast<uint32_t>(vu::Request::kSetMemTable), vu::kVersion, 0xfffffff0};
  raw_send(s.get(), &h, sizeof h);
  EXPECT_TRUE(server_closed(s.get()));
  expect_server_healthy();
}

TEST_F(VhostUserIntegration, BadFdsCloseConnection) {
  {  // GET_FEATURES with an fd attached
    auto s = raw_connect(path_);
    auto efd = make_eventfd();
    vu::Header h{static_cast<uint32_t>(vu::Request::kGetFeatures), vu::kVersion, 0};
    raw_send(s.get(), &h, sizeof h, {efd.get()});
    EXPECT_TRUE(server_closed(s.get()));
  }
  {  // SET_VRING_KICK without its fd
    auto s = raw_connect(path_);
    uint8_t buf[20];
    vu::Header h{static_cast<uint32_t>(vu::Request::kSetVringKick), vu::kVersion, 8};
    std::memcpy(buf, &h, 12);
    const uint64_t v = 0;
    std::memcpy(buf + 12, &v, 8);
    raw_send(s.get(), buf, sizeof buf);
    EXPECT_TRUE(server_closed(s.get()));
  }
  {  // SET_MEM_TABLE: 2 regions, 1 fd
    auto s = raw_connect(path_);
    auto efd = make_eventfd();
    std::vector<uint8_t> p(12 + 8 + 64);
    vu::Header h{static_cast<uint32_t>(vu::Request::kSetMemTable), vu::kVersion, 72};
    std::memcpy(p.data(), &h, 12);
    vu::MemoryTableHeader mt{2, 0};
    std::memcpy(p.data() + 12, &mt, 8);
    raw_send(s.get(), p.data(), p.size(), {efd.get()});
    EXPECT_TRUE(server_closed(s.get()));
  }
  {  // unknown request id
    auto s = raw_connect(path_);
    vu::Header h{1000, vu::kVersion, 0};
    raw_send(s.get(), &h, sizeof h);
    EXPECT_TRUE(server_closed(s.get()));
  }
  expect_server_healthy();
}

TEST_F(VhostUserIntegration, MalformedMessageMidSessionResetsDevice) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 1));
  echo(d, 0, 9);
  // Out-of-range queue index on a live session: protocol violation.
  vu::VringState st{9, 16};
  ASSERT_TRUE(d.fe->connection().send(static_cast<uint32_t>(vu::Request::kSetVringNum), vu::kVersion,
                                      vu::as_bytes_of(st)));
  ASSERT_TRUE(eventually([&] { return dev_.resets.load() == 1; }));
  auto f = d.fe->get_features();
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, Errc::kClosed);
  expect_server_healthy();
}

TEST_F(VhostUserIntegration, OneFrontEndAtATime) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 0));
  auto s = raw_connect(path_);  // waits in the backlog
  ASSERT_TRUE(s.valid());
  vu::Header h{static_cast<uint32_t>(vu::Request::kGetFeatures), vu::kVersion, 0};
  raw_send(s.get(), &h, sizeof h);
  EXPECT_FALSE(wait_readable(s.get(), 200)) << "second front-end must wait";
  d.fe.reset();  // first one leaves
  ASSERT_TRUE(wait_readable(s.get(), 5000));
  vu::Header rh{};
  ASSERT_EQ(::recv(s.get(), &rh, sizeof rh, MSG_WAITALL), static_cast<ssize_t>(sizeof rh));
  EXPECT_EQ(rh.request, static_cast<uint32_t>(vu::Request::kGetFeatures));
  EXPECT_EQ(rh.flags, vu::kVersion | vu::kFlagReply);
  EXPECT_EQ(rh.size, 8u);
}

TEST_F(VhostUserIntegration, SocketPathInUse) {
  EchoDevice other;
  auto s = vu::Server::create(path_, other);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, Errc::kBusy);
  EXPECT_NE(s.error().message.find("socket path in use"), std::string::npos) << s.error().message;
  // A regular file in the way is refused too.
  const std::string file = dir_ + "/not-a-socket";
  { FILE* f = std::fopen(file.c_str(), "w"); ASSERT_NE(f, nullptr); std::fclose(f); }
  auto s2 = vu::Server::create(file, other);
  ASSERT_FALSE(s2);
  EXPECT_EQ(s2.error().code, Errc::kBusy);
  // The running server is unaffected.
  expect_server_healthy();
}

TEST_F(VhostUserIntegration, StaleSocketIsReplaced) {
  const std::string stale = dir_ + "/stale.sock";
  {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, stale.data(), stale.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  }  // closed without unlink: stale socket file
  ASSERT_TRUE(std::filesystem::exists(stale));
  EchoDevice other;
  auto s = vu::Server::create(stale, other);
  ASSERT_TRUE(s) << s.error().to_string();
  auto fe = vhost_user::Frontend::connect(stale);
  ASSERT_TRUE(fe);  // connect works: it listens (serving starts with run())
}

TEST_F(VhostUserIntegration, ShutdownDrainsAndRemovesSocket) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 1));
  echo(d, 0, 5);
  server_->shutdown();
  thread_.join();
  EXPECT_TRUE(run_status_.has_value());
  EXPECT_EQ(dev_.resets.load(), 1);
  EXPECT_EQ(dev_.stopped.load(), 1);
  EXPECT_FALSE(std::filesystem::exists(path_));
  auto f = d.fe->get_features();
  EXPECT_FALSE(f);
}

TEST_F(VhostUserIntegration, MemorySlotsAddRemoveThroughFrontend) {
  Driver d;
  ASSERT_NO_FATAL_FAILURE(bring_up(d, 1));
  auto slots = d.fe->get_max_mem_slots();
  ASSERT_TRUE(slots);
  EXPECT_GE(*slots, 8u);
  auto extra = virtio::DriverMemory::create(0x10000, 0x40000000);
  ASSERT_TRUE(extra);
  const auto r = (*extra)->region();
  vhost_user::SharedRegion sr{r.guest_addr, r.size, r.user_addr, 0, (*extra)->fd()};
  ASSERT_TRUE(d.fe->add_mem_reg(sr));
  echo(d, 0, 6);  // ring keeps working across the memory change
  ASSERT_TRUE(d.fe->rem_mem_reg(sr));
  auto again = d.fe->rem_mem_reg(sr);
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("REM_MEM_REG"), std::string::npos);
  echo(d, 0, 7);
}

}  // namespace
}  // namespace iceblk
