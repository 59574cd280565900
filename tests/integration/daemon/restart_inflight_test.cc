// A daemon restart loses nothing (issue 15, part 1): iceblkd is killed with SIGKILL
// while its completions are out of order (--test-reorder-completions holds the first
// one back), restarted, and a front-end that behaves like QEMU reconnects: the same
// guest memory and ring, each ring resumed at its used index (QEMU's fallback when
// GET_VRING_BASE cannot be answered).
//
//   slot 0: A  write 'A' -> sector 0    held: not in the used ring at the crash
//   slot 1: B  write 'B' -> sector 8    completed
//   slot 2: C  write 'C' -> sector 16   completed; the guest then reuses C's data
//                                       buffer (fills it with 'Z')
//   SIGKILL, restart (without the hold), reconnect
//   slot 3: D  write 'D' -> sector 24
//
// Without inflight tracking the restarted device resumes at used->idx = 2: A is
// never completed (the guest would hang) and C is redone from its reused buffer,
// writing 'Z' over data the guest was told is on disk. With
// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (the front-end keeps the region from
// GET_INFLIGHT_FD and hands it back with SET_INFLIGHT_FD) the device resubmits A,
// continues at slot 3, and every request completes exactly once.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "base/le.h"
#include "blk/wire.h"
#include "iceblk/device.h"
#include "iceblk/keyslot_manager.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"
#include "support/temp_dir.h"
#include "vhost_user/frontend.h"
#include "virtio/driver_queue.h"
#include "virtio/features.h"
#include "virtio/ring_layout.h"

namespace iceblk {
namespace {

using testing::Subprocess;

constexpr uint16_t kRingSize = 16;
constexpr uint32_t kBlock = 4096;

// The part of a QEMU-like front-end that outlives the back-end: guest memory, the
// ring, its eventfds and (when used) the inflight region.
class Guest {
 public:
  explicit Guest(bool use_inflight) : use_inflight_(use_inflight) {
    auto m = virtio::DriverMemory::create(1 << 20);
    EXPECT_TRUE(m);
    mem_ = *m;
    auto q = virtio::DriverQueue::create(mem_, kRingSize, /*event_idx=*/false);
    EXPECT_TRUE(q);
    vq_ = std::move(*q);
    kick_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    call_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }

  // Connect and start the ring like QEMU's vhost_user_blk_start after a reconnect.
  Status connect(const std::string& socket) {
    ICEBLK_ASSIGN_OR_RETURN(fe_, vhost_user::Frontend::connect(socket));
    uint64_t pf = vhost_user::kProtocolFeatures;
    if (!use_inflight_) pf &= ~vhost_user::pf_bit(vhost_user::kPfInflightShmfd);
    ICEBLK_ASSIGN_OR_RETURN(auto n,
                            fe_->handshake(virtio::feature_bit(virtio::kFeatureVersion1), pf));
    if (use_inflight_) {
      if ((n.protocol_features & vhost_user::pf_bit(vhost_user::kPfInflightShmfd)) == 0) {
        return fail(Errc::kUnsupported, "the back-end does not offer INFLIGHT_SHMFD");
      }
      // QEMU asks for a region once and keeps it for every later back-end.
      if (!inflight_.fd.valid()) {
        ICEBLK_ASSIGN_OR_RETURN(inflight_, fe_->get_inflight_fd(1, kRingSize));
        if (!inflight_.fd.valid()) return fail(Errc::kUnsupported, "GET_INFLIGHT_FD declined");
      }
      ICEBLK_TRY(fe_->set_inflight_fd(inflight_));
    }
    vhost_user::SharedRegion region{mem_->guest_base(), mem_->size(), mem_->guest_base(), 0,
                                    mem_->fd()};
    ICEBLK_TRY(fe_->set_mem_table(std::span(&region, 1)));
    const auto qc = vq_->device_config();
    vhost_user::VringSetup s;
    s.size = kRingSize;
    s.desc_user_addr = qc.desc.value;
    s.avail_user_addr = qc.avail.value;
    s.used_user_addr = qc.used.value;
    s.base = used_idx();  // what QEMU restores when GET_VRING_BASE failed
    s.kick_fd = kick_.get();
    s.call_fd = call_.get();
    return fe_->setup_vring(0, s);
  }
  void drop_connection() { fe_.reset(); }

  // Queue "write `fill` x 4 KiB at `sector`"; returns its head.
  uint16_t write(uint64_t sector, uint8_t fill, GuestAddr* data_out = nullptr) {
    auto hdr = mem_->alloc(16);
    auto data = mem_->alloc(kBlock, 4096);
    auto status = mem_->alloc(1);
    EXPECT_TRUE(hdr && data && status);
    uint8_t h[16] = {};
    const uint32_t type = blk::kTypeOut;
    std::memcpy(h, &type, 4);
    std::memcpy(h + 8, &sector, 8);
    std::memcpy(mem_->ptr(*hdr, 16), h, 16);
    std::memset(mem_->ptr(*data, kBlock), fill, kBlock);
    *mem_->ptr(*status) = 0xff;
    virtio::Buffer bufs[3] = {{*hdr, 16, false}, {*data, kBlock, false}, {*status, 1, true}};
    auto head = vq_->add(bufs);
    EXPECT_TRUE(head) << head.error().to_string();
    vq_->publish();
    const uint64_t one = 1;
    EXPECT_EQ(::write(kick_.get(), &one, 8), 8);
    status_of_.insert_or_assign(*head, *status);
    if (data_out) *data_out = *data;
    return *head;
  }

  // Completions seen within `ms` (head -> times completed), statuses checked.
  std::map<uint16_t, int> collect(int ms, size_t stop_after = SIZE_MAX) {
    std::map<uint16_t, int> seen;
    size_t n = 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end && n < stop_after) {
      if (auto u = vq_->get_used()) {
        ++seen[u->head];
        ++n;
        auto it = status_of_.find(u->head);
        if (it != status_of_.end()) {
          EXPECT_EQ(*mem_->ptr(it->second), blk::kStatusOk) << "head " << u->head;
        }
        continue;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return seen;
  }

  uint8_t* ptr(GuestAddr a, uint64_t n) { return mem_->ptr(a, n); }
  int call_fd() const { return call_.get(); }

 private:
  uint16_t used_idx() const {
    uint16_t v;
    std::memcpy(&v, mem_->ptr(vq_->device_config().used, 4) + virtio::kRingIdxOff, 2);
    return v;
  }

  bool use_inflight_;
  std::shared_ptr<virtio::DriverMemory> mem_;
  std::unique_ptr<virtio::DriverQueue> vq_;
  UniqueFd kick_, call_;
  std::unique_ptr<vhost_user::Frontend> fe_;
  vhost_user::InflightShm inflight_;
  std::map<uint16_t, GuestAddr> status_of_;
};

uint8_t image_byte(const std::string& path, uint64_t sector) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  uint8_t buf[kBlock];
  EXPECT_EQ(::pread(fd, buf, kBlock, static_cast<off_t>(sector * 512)),
            static_cast<ssize_t>(kBlock));
  ::close(fd);
  for (uint32_t i = 1; i < kBlock; ++i)
    EXPECT_EQ(buf[i], buf[0]) << "sector " << sector << " is torn";
  return buf[0];
}

// What the guest saw across the crash.
struct Outcome {
  bool a_completed = false;
  std::map<uint16_t, int> early;  // completions right after the restart (head -> count)
  std::map<uint16_t, int> late;   // completions once D was queued
  uint16_t a = 0, c = 0, d = 0;
  uint8_t sector0 = 0, sector8 = 0, sector16 = 0, sector24 = 0;
};

Outcome crash_while_out_of_order(bool use_inflight) {
  Outcome o;
  const std::string dir = testing::make_temp_dir("iceblk-restart");
  const std::string sock = dir + "/vm.sock", image = dir + "/disk.img";
  auto daemon = [&](bool hold, const std::string& log) {
    std::vector<std::string> argv = {ICEBLKD_PATH, "--socket", sock,       "--image",     image,
                                     "--size",     "1M",       "--no-ice", "--io-engine", "sync"};
    if (hold) {
      // Hold the first completion until 1000 later ones: for the whole test.
      argv.insert(argv.end(), {"--test-reorder-completions", "1000:1000"});
    }
    auto p = std::make_unique<Subprocess>(argv, dir + "/" + log);
    EXPECT_TRUE(testing::wait_for_listener(sock)) << p->output();
    return p;
  };
  Guest g(use_inflight);
  auto d1 = daemon(true, "d1.log");
  auto st = g.connect(sock);
  EXPECT_TRUE(st) << st.error().to_string();
  o.a = g.write(0, 'A');
  EXPECT_TRUE(g.collect(300).empty()) << "A's completion must be held";
  const uint16_t b = g.write(8, 'B');
  EXPECT_EQ(g.collect(5000, 1), (std::map<uint16_t, int>{{b, 1}}));
  GuestAddr c_data{0};
  o.c = g.write(16, 'C', &c_data);
  EXPECT_EQ(g.collect(5000, 1), (std::map<uint16_t, int>{{o.c, 1}}));
  // B and C are done: the guest reuses C's page for something else.
  std::memset(g.ptr(c_data, kBlock), 'Z', kBlock);

  d1->signal(SIGKILL);
  EXPECT_TRUE(d1->wait(5000));
  g.drop_connection();
  auto d2 = daemon(false, "d2.log");
  uint64_t stale;
  while (::read(g.call_fd(), &stale, 8) == 8) {
  }
  st = g.connect(sock);
  EXPECT_TRUE(st) << st.error().to_string();
  pollfd p{g.call_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 2000), 1) << "the device signals a new call fd once (missed interrupts)";
  // Let the restarted device look at the ring before the guest queues more (a
  // redo, if any, happens now, while C's descriptors still describe C).
  o.early = g.collect(500);
  o.a_completed = o.early.count(o.a) != 0;
  o.d = g.write(24, 'D');  // may reuse A's head once A completed
  o.late = g.collect(1500);
  o.sector0 = image_byte(image, 0);
  o.sector8 = image_byte(image, 8);
  o.sector16 = image_byte(image, 16);
  o.sector24 = image_byte(image, 24);
  g.drop_connection();
  d2->signal(SIGTERM);
  EXPECT_TRUE(d2->wait(10000));
  std::filesystem::remove_all(dir);
  return o;
}

// The failure the fix is for: QEMU's fallback alone, with out-of-order completions.
// If this stops failing, the fault injection no longer reorders, and the test below
// proves nothing.
TEST(DaemonRestart, WithoutInflightTrackingARequestIsLostAndAnotherRedone) {
  const Outcome o = crash_while_out_of_order(false);
  EXPECT_FALSE(o.a_completed) << "A, held at the crash, is never completed: the guest hangs";
  EXPECT_EQ(o.early.count(o.c), 1u) << "C, completed before the crash, is redone";
  EXPECT_EQ(o.sector16, 'Z') << "the redo wrote the guest's reused buffer over C's data";
}

// The regression test: with INFLIGHT_SHMFD nothing is lost or redone.
TEST(DaemonRestart, WithInflightTrackingNothingIsLostOrRedone) {
  const Outcome o = crash_while_out_of_order(true);
  EXPECT_TRUE(o.a_completed) << "A must be resubmitted and completed";
  EXPECT_EQ(o.early, (std::map<uint16_t, int>{{o.a, 1}})) << "only A (resubmitted) completes, once";
  EXPECT_EQ(o.late, (std::map<uint16_t, int>{{o.d, 1}})) << "then D (new), once";
  EXPECT_EQ(o.sector0, 'A');
  EXPECT_EQ(o.sector8, 'B');
  EXPECT_EQ(o.sector16, 'C') << "C must not be redone from its reused buffer";
  EXPECT_EQ(o.sector24, 'D');
}

// Keys across a restart (docs/protocol.md §2, key_generation, proposed): a restarted
// in-band device holds no keys, and says so with a new key_generation. The driver
// library notices the change when it reconnects and programs its named keys again,
// so encrypted data written before the crash reads back; refresh_keys() with an
// unchanged generation programs nothing.
TEST(DaemonRestart, DriverNoticesTheKeyGenerationAndReprograms) {
  const std::string dir = testing::make_temp_dir("iceblk-restart-keys");
  const std::string sock = dir + "/vm.sock", image = dir + "/disk.img";
  auto daemon = [&](const std::string& log) {
    auto p = std::make_unique<Subprocess>(
        std::vector<std::string>{ICEBLKD_PATH, "--socket", sock, "--image", image, "--size", "4M"},
        dir + "/" + log);
    EXPECT_TRUE(testing::wait_for_listener(sock)) << p->output();
    return p;
  };
  auto d1 = daemon("d1.log");
  driver::ConnectOptions o;
  o.socket_path = sock;
  auto dev = driver::Device::connect(o);
  ASSERT_TRUE(dev) << dev.error().to_string();
  ASSERT_EQ((*dev)->key_mode(), KeyMode::kInBand);
  ASSERT_EQ((*dev)->config().raw.size(), blk::kConfigSize);
  const ice::CryptoMode xts{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};
  ASSERT_TRUE((*dev)->add_key("k", xts, test::pattern(64, 7)));
  const auto plain = test::pattern(8192, 8);
  ASSERT_TRUE((*dev)->write(0, plain, driver::KeyRef{"k", 3}));
  const uint32_t gen1 = (*dev)->config().key_generation;
  const uint64_t programs1 = (*dev)->keyslots()->programs_done();
  auto same = (*dev)->refresh_keys();
  ASSERT_TRUE(same) << same.error().to_string();
  EXPECT_FALSE(*same) << "nothing was lost: nothing to reprogram";
  EXPECT_EQ((*dev)->keyslots()->programs_done(), programs1);

  d1->signal(SIGKILL);
  ASSERT_TRUE(d1->wait(5000));
  auto d2 = daemon("d2.log");
  ASSERT_TRUE((*dev)->reconnect());
  EXPECT_NE((*dev)->config().key_generation, gen1)
      << "a restarted device must not claim the old keys";
  EXPECT_EQ((*dev)->keyslots()->programs_done(), programs1 + 1)
      << "the driver programmed its key again";
  std::vector<uint8_t> back(plain.size());
  ASSERT_TRUE((*dev)->read(0, back, driver::KeyRef{"k", 3}));
  EXPECT_EQ(back, plain) << "data written before the crash decrypts with the reprogrammed key";
  auto again = (*dev)->refresh_keys();
  ASSERT_TRUE(again);
  EXPECT_FALSE(*again);
  dev->reset();
  d2->signal(SIGTERM);
  EXPECT_TRUE(d2->wait(10000));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace iceblk
