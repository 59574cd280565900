// Connection framing over a real socketpair: SCM_RIGHTS fds arrive with the header,
// misplaced / excess fds are closed and rejected, truncation and oversize detected.
#include "vhost_user/connection.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "unit/vhost_user/fd_probe.h"
#include "support/socket.h"

namespace iceblk::vhost_user {
namespace {

using testing::FdProbe;

struct Pair {
  Pair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a = std::make_unique<Connection>(UniqueFd(sv[0]));
    b.reset(sv[1]);
  }
  std::unique_ptr<Connection> a;  // receiver under test
  UniqueFd b;                     // raw peer
  void send_raw(const void* p, size_t n, const std::vector<int>& fds = {}) { test::raw_send(b.get(), p, n, fds); }
};

TEST(VhostConnection, MessageWithFdRoundTrip) {
  Pair p;
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
  Connection sender(std::move(p.b));
  uint64_t v = 3;
  const int fd = efd.get();
  ASSERT_TRUE(sender.send(12, kVersion, as_bytes_of(v), std::span<const int>(&fd, 1)));
  auto m = p.a->receive(-1, 1000);
  ASSERT_TRUE(m.has_value()) << m.error().to_string();
  EXPECT_EQ(m->header.request, 12u);
  EXPECT_EQ(m->header.size, 8u);
  ASSERT_EQ(m->fds.size(), 1u);
  // Same eventfd: a write through the received fd is visible through the original.
  uint64_t one = 1;
  ASSERT_EQ(::write(m->fds[0].get(), &one, 8), 8);
  uint64_t got = 0;
  ASSERT_EQ(::read(efd.get(), &got, 8), 8);
  EXPECT_EQ(got, 1u);
  EXPECT_NE(::fcntl(m->fds[0].get(), F_GETFD) & FD_CLOEXEC, 0);  // MSG_CMSG_CLOEXEC
}

TEST(VhostConnection, CleanEofIsClosed) {
  Pair p;
  p.b.reset();
  auto m = p.a->receive(-1, 1000);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, Errc::kClosed);
}

TEST(VhostConnection, TruncatedHeaderAndPayload) {
  {
    Pair p;
    const uint8_t half[6] = {1, 0, 0, 0, 1, 0};
    p.send_raw(half, sizeof half);
    p.b.reset();
    auto m = p.a->receive(-1, 1000);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, Errc::kProtocol);
  }
  {
    Pair p;
    Header h{2, kVersion, 8};
    p.send_raw(&h, sizeof h);
    const uint8_t part[3] = {};
    p.send_raw(part, sizeof part);
    p.b.reset();
    auto m = p.a->receive(-1, 1000);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, Errc::kProtocol);
  }
}

TEST(VhostConnection, HeaderSplitAcrossWritesIsReassembled) {
  Pair p;
  Header h{2, kVersion, 8};
  uint8_t buf[20];
  std::memcpy(buf, &h, 12);
  const uint64_t v = 0xabcdef;
  std::memcpy(buf + 12, &v, 8);
  p.send_raw(buf, 5);
  p.send_raw(buf + 5, 10);
  p.send_raw(buf + 15, 5);
  auto m = p.a->receive(-1, 1000);
  ASSERT_TRUE(m.has_value()) << m.error().to_string();
  EXPECT_EQ(load_obj<uint64_t>(m->payload.data()), v);
}

TEST(VhostConnection, OversizedPayloadRefusedBeforeReading) {
  Pair p;
  Header h{5, kVersion, 0x7fffffff};
  p.send_raw(&h, sizeof h);
  auto m = p.a->receive(-1, 1000);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, Errc::kProtocol);
  EXPECT_NE(m.error().message.find("exceeds"), std::string::npos);
}

TEST(VhostConnection, FdsAfterFirstBytesAreClosedAndRejected) {
  Pair p;
  Header h{12, kVersion, 8};
  uint8_t buf[20] = {};
  std::memcpy(buf, &h, 12);
  FdProbe probe;
  // The whole header without fds, then the payload carrying an fd. (An fd sent with
  // a later part of the *header* can legitimately arrive in the first recvmsg.)
  p.send_raw(buf, 12);
  p.send_raw(buf + 12, 8, {probe.raw_write_end()});
  probe.drop_own_copy();
  auto m = p.a->receive(-1, 1000);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, Errc::kProtocol);
  EXPECT_TRUE(probe.closed());
}

TEST(VhostConnection, TooManyFdsAreClosedAndRejected) {
  Pair p;
  Header h{5, kVersion, 0};
  std::vector<FdProbe> probes(40);
  std::vector<int> fds;
  for (auto& pr : probes) fds.push_back(pr.raw_write_end());
  p.send_raw(&h, sizeof h, fds);
  for (auto& pr : probes) pr.drop_own_copy();
  auto m = p.a->receive(-1, 1000);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, Errc::kProtocol);
  for (auto& pr : probes) EXPECT_TRUE(pr.closed());
}

TEST(VhostConnection, CancelAndTimeout) {
  Pair p;
  UniqueFd cancel(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  auto t = p.a->receive(cancel.get(), 50);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kClosed);
  EXPECT_NE(t.error().message.find("timeout"), std::string::npos);
  std::thread th([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    uint64_t one = 1;
    EXPECT_EQ(::write(cancel.get(), &one, 8), 8);
  });
  auto c = p.a->receive(cancel.get(), -1);
  th.join();
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, Errc::kClosed);
  EXPECT_NE(c.error().message.find("cancelled"), std::string::npos);
}

TEST(VhostConnection, SendToClosedPeerIsClosedNotSigpipe) {
  Pair p;
  p.b.reset();
  uint64_t v = 0;
  auto s = p.a->send(1, kVersion, as_bytes_of(v));
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, Errc::kClosed);
}

}  // namespace
}  // namespace iceblk::vhost_user
