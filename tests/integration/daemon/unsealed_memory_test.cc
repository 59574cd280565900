// Guest memory that shrinks under the device (issue 14, part 1; docs/threat-model.md,
// claim 11). The real iceblkd (seccomp sandbox on) serves two exports; A accepts
// unsealed memory (allow_unsealed_memory). On A a hostile front-end with an UNSEALED
// memfd completes one read, writes a write's descriptors, ftruncate()s its memfd
// down to 16 pages, publishes the write and kicks (with A's workers idle, or
// polling their ring). In one case the cut pages hold only the write's data and status
// buffers, in the other they hold the rings. Meanwhile B does verified I/O all
// along. Expected: B sees zero errors, iceblkd does not die of SIGBUS (status 135
// before the guard), A's hostile connection is closed with a log line naming the
// export and the cause, no byte of the cut write reaches A's image, and A's next
// well-behaved front-end gets verified I/O.
//
// The hostile ring is built here by hand from the virtio UAPI structs (not with the
// project's driver-side ring code); only the vhost-user messages go through
// vhost_user::Frontend.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/virtio_blk.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "iceblk/device.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"
#include "support/socket.h"
#include "support/wait.h"
#include "vhost_user/frontend.h"

#ifndef ICEBLKD_PATH
#error "ICEBLKD_PATH must name the iceblkd binary"
#endif

namespace iceblk {
namespace {

namespace drv = iceblk::driver;
using test::closed_by_peer;
using test::pattern;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMemSize = 256 * kPage;  // the hostile front-end's memfd
constexpr uint64_t kCutTo = 16 * kPage;     // what it ftruncate()s it down to
constexpr uint64_t kUserBase = 0x7f0000000000ull;
constexpr uint16_t kRing = 16;  // desc table 0x100 bytes: avail at +0x100, used at +0x200
constexpr uint64_t kWriteOffset = 64 * 1024;  // byte offset on A of the cut write
// Feature bits of docs/protocol.md §1 (ICE requests, in-band keys), by number.
constexpr unsigned kFeatureVersion1 = 32, kFeatureIce = 22, kFeatureIceInbandKeys = 23;
constexpr uint32_t kTypeProgramKey = 29;  // VIRTIO_BLK_T_ICE_PROGRAM_KEY (protocol.md §6)

// Split ring structures, from the virtio 1.2 spec §2.7 (not the project's headers).
constexpr uint16_t kDescNext = 1, kDescWrite = 2;
struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
struct Avail {
  uint16_t flags;
  uint16_t idx;
  uint16_t ring[kRing];
};
struct Used {
  uint16_t flags;
  uint16_t idx;
  struct {
    uint32_t id, len;
  } ring[kRing];
};
static_assert(sizeof(Desc) == 16 && sizeof(Avail) == 4 + 2 * kRing &&
              sizeof(Used) == 4 + 8 * kRing);

// The 32-byte request header with bit 22 (protocol.md §3).
struct IceHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
  uint8_t slot;
  uint8_t activate;
  uint16_t reserved1;
  uint32_t reserved2;
  uint64_t dun;
};
static_assert(sizeof(IceHeader) == 32);

// PROGRAM_KEY data (protocol.md §6): AES-256-XTS, 4096-byte data units.
std::vector<uint8_t> key_blob() {
  std::vector<uint8_t> b(136, 0);
  b[0] = 0;   // AES-XTS
  b[1] = 3;   // 512 << 3 = 4096
  b[2] = 3;   // 256-bit
  b[3] = 0;   // raw key
  b[4] = 64;  // key_len (le16)
  const auto key = pattern(64, 9);
  std::copy(key.begin(), key.end(), b.begin() + 8);
  return b;
}

// Where the hostile front-end puts things (byte offsets in its memfd).
struct Layout {
  uint64_t rings;   // desc table; avail at +0x100, used at +0x200
  uint64_t hdr;     // request headers (two, 16 bytes apart)
  uint64_t data;    // one 4 KiB data buffer per request
  uint64_t status;  // status bytes (two)
};
// Rings cut: they sit at the end of memory, the buffers at the start.
constexpr Layout kRingsCut{200 * kPage, 1 * kPage, 2 * kPage, 8 * kPage};
// Data cut: rings and headers stay, the second request's data and status go.
constexpr Layout kDataCut{0, 1 * kPage, 100 * kPage, 110 * kPage};

bool wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

// A vhost-user front-end with one split ring in an unsealed memfd, written by hand.
class HostileFrontEnd {
 public:
  HostileFrontEnd(const std::string& socket, const Layout& l) : l_(l) {
    mem_ = UniqueFd(::memfd_create("hostile-guest", MFD_CLOEXEC));  // no MFD_ALLOW_SEALING
    EXPECT_TRUE(mem_);
    EXPECT_EQ(::ftruncate(mem_.get(), kMemSize), 0);
    void* p = ::mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_SHARED, mem_.get(), 0);
    EXPECT_NE(p, MAP_FAILED);
    base_ = static_cast<uint8_t*>(p);
    kick_ = UniqueFd(::eventfd(0, EFD_CLOEXEC));
    call_ = UniqueFd(::eventfd(0, EFD_CLOEXEC));
    auto fe = vhost_user::Frontend::connect(socket);
    EXPECT_TRUE(fe) << fe.error().to_string();
    if (!fe) return;
    fe_ = std::move(*fe);
  }
  ~HostileFrontEnd() {
    // Never touch the cut pages ourselves: unmap only.
    if (base_ != nullptr) ::munmap(base_, kMemSize);
  }

  Status set_up() {
    ICEBLK_TRY(fe_->handshake((1ull << kFeatureVersion1) | (1ull << kFeatureIce) |
                              (1ull << kFeatureIceInbandKeys))
                   .map([](auto&&) {}));
    if ((fe_->acked_features() & (1ull << kFeatureIceInbandKeys)) == 0) {
      return fail(Errc::kUnsupported, "the device did not offer in-band ICE keys");
    }
    const vhost_user::SharedRegion r{0, kMemSize, kUserBase, 0, mem_.get()};
    ICEBLK_TRY(fe_->set_mem_table(std::span(&r, 1)));
    vhost_user::VringSetup s;
    s.size = kRing;
    s.desc_user_addr = kUserBase + l_.rings;
    s.avail_user_addr = kUserBase + l_.rings + 0x100;
    s.used_user_addr = kUserBase + l_.rings + 0x200;
    s.kick_fd = kick_.get();
    s.call_fd = call_.get();
    return fe_->setup_vring(0, s);
  }

  // Request i (0..2): descriptors 3i..3i+2, header, data, status. Written and,
  // unless `publish` is false, published in the avail ring; never kicked. IN
  // reads 4 KiB; OUT and PROGRAM_KEY send `data`; `encrypted`: slot 0, DUN =
  // offset / 4096.
  void queue(unsigned i, uint32_t type, uint64_t offset, std::span<const uint8_t> data = {},
             bool encrypted = false, bool publish = true) {
    const uint64_t hdr = l_.hdr + sizeof(IceHeader) * i, buf = l_.data + kPage * i,
                   status = l_.status + i;
    IceHeader h{};
    h.type = type;
    h.sector = offset / 512;
    h.activate = encrypted ? 1 : 0;
    h.dun = encrypted ? offset / 4096 : 0;
    std::memcpy(base_ + hdr, &h, sizeof h);
    if (!data.empty()) std::memcpy(base_ + buf, data.data(), data.size());
    base_[status] = 0xff;
    auto* desc = reinterpret_cast<Desc*>(base_ + l_.rings);
    const uint16_t d = static_cast<uint16_t>(3 * i);
    desc[d] = Desc{hdr, sizeof h, kDescNext, static_cast<uint16_t>(d + 1)};
    const uint16_t data_flags = type == VIRTIO_BLK_T_IN ? kDescWrite : 0;
    const auto len = static_cast<uint32_t>(type == VIRTIO_BLK_T_IN ? kPage : data.size());
    desc[d + 1] =
        Desc{buf, len, static_cast<uint16_t>(data_flags | kDescNext), static_cast<uint16_t>(d + 2)};
    desc[d + 2] = Desc{status, 1, kDescWrite, 0};
    auto* avail = reinterpret_cast<Avail*>(base_ + l_.rings + 0x100);
    avail->ring[i % kRing] = d;
    if (publish) this->publish(i);
  }
  // Makes request i visible to the device (avail->idx = i + 1).
  void publish(unsigned i) {
    auto* avail = reinterpret_cast<Avail*>(base_ + l_.rings + 0x100);
    __atomic_store_n(&avail->idx, static_cast<uint16_t>(i + 1), __ATOMIC_RELEASE);
  }
  void kick() const {
    const uint64_t one = 1;
    EXPECT_EQ(::write(kick_.get(), &one, sizeof one), 8);
  }
  // Waits for request i's used entry; its status byte (0xff = none in time).
  uint8_t wait_done(unsigned i) const {
    const auto* used = reinterpret_cast<const Used*>(base_ + l_.rings + 0x200);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE) < i + 1) {
      if (std::chrono::steady_clock::now() > deadline) return 0xff;
      wait_readable(call_.get(), 100);
    }
    return base_[l_.status + i];
  }
  [[nodiscard]] std::span<const uint8_t> data(unsigned i) const {
    return {base_ + l_.data + kPage * i, kPage};
  }
  // The attack: cut the memory file under the device.
  int shrink() const { return ::ftruncate(mem_.get(), kCutTo); }
  [[nodiscard]] int socket_fd() { return fe_->connection().fd(); }

 private:
  Layout l_;
  UniqueFd mem_, kick_, call_;
  uint8_t* base_ = nullptr;
  std::unique_ptr<vhost_user::Frontend> fe_;
};

std::unique_ptr<drv::Device> connect(const std::string& socket) {
  drv::ConnectOptions o;
  o.socket_path = socket;
  o.num_queues = 1;
  o.memory_size = 4 << 20;
  o.reply_timeout_ms = 10000;
  auto d = drv::Device::connect(o);
  EXPECT_TRUE(d) << socket << ": " << d.error().to_string();
  return d ? std::move(*d) : nullptr;
}

std::vector<uint8_t> pread_file(const std::string& path, uint64_t offset, size_t n) {
  std::vector<uint8_t> out(n);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path;
  if (fd < 0) return {};
  EXPECT_EQ(::pread(fd, out.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  ::close(fd);
  return out;
}

// `encrypted`: the hostile front-end programs an in-band key, completes an
// encrypted read, and the cut request is an encrypted write (the device encrypts
// from the cut pages into its own buffer before it would submit). `poll_us`: A's
// workers poll their ring (--poll-us), so they take chains without kicks.
void run_case(const Layout& layout, const std::string& io_engine, bool encrypted = false,
              uint32_t poll_us = 0) {
  const std::string dir = testing::make_temp_dir("iceblkd-unsealed");
  ASSERT_FALSE(dir.empty());
  const std::string a_sock = dir + "/a.sock", b_sock = dir + "/b.sock", a_img = dir + "/a.img";
  testing::write_file(dir + "/cfg.json", R"({
    "engine": {"num_slots": 8},
    "exports": [
      {"name": "vm-a", "socket": ")" + a_sock +
                                             R"(", "image": ")" + a_img + R"(", "size": "8M",
       "num_queues": 1, "slot_offset": 0, "max_slots": 4, "allow_unsealed_memory": true,
       "io_engine": ")" + io_engine + R"(", "poll_us": )" +
                                             std::to_string(poll_us) + R"(},
      {"name": "vm-b", "socket": ")" + b_sock +
                                             R"(", "image": ")" + dir + R"(/b.img", "size": "8M",
       "num_queues": 1, "slot_offset": 4, "max_slots": 4}
    ]})");
  testing::Subprocess p({ICEBLKD_PATH, "--config", dir + "/cfg.json", "--log-level", "debug"},
                        dir + "/iceblkd.log");
  ASSERT_TRUE(testing::wait_for_listener(a_sock)) << p.output();
  ASSERT_TRUE(testing::wait_for_listener(b_sock)) << p.output();

  // What A's image holds where the hostile write will aim (a good front-end writes it).
  const auto before = pattern(kPage, 41);
  {
    auto a = connect(a_sock);
    ASSERT_TRUE(a);
    ASSERT_TRUE(a->write(kWriteOffset, before));
    ASSERT_TRUE(a->flush());
  }

  // B: verified I/O, plain and encrypted, all along.
  auto b = connect(b_sock);
  ASSERT_TRUE(b);
  const ice::CryptoMode mode{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};
  ASSERT_TRUE(b->add_key("k", mode, pattern(64, 2)));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> b_ops{0}, b_errors{0};
  std::thread b_io;
  // Joined on every way out (an ASSERT returns early).
  struct Joiner {
    std::atomic<bool>& stop;
    std::thread& t;
    ~Joiner() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } joiner{stop, b_io};
  b_io = std::thread([&] {
    std::vector<uint8_t> back(8192);
    for (uint32_t i = 0; !stop.load(); ++i) {
      const uint64_t off = (i % 512) * 8192ull;
      const auto data = pattern(8192, i);
      const bool enc = (i % 2) != 0;
      const bool ok = enc ? b->write(off, data, drv::KeyRef{"k", off / 4096}) &&
                                b->read(off, back, drv::KeyRef{"k", off / 4096})
                          : b->write(off, data) && b->read(off, back);
      if (!ok || back != data) ++b_errors;
      ++b_ops;
    }
  });

  {
    HostileFrontEnd h(a_sock, layout);
    const Status up = h.set_up();
    ASSERT_TRUE(up) << up.error().to_string();
    unsigned next = 0;
    if (encrypted) {
      h.queue(next, kTypeProgramKey, 0, key_blob());
      h.kick();
      ASSERT_EQ(h.wait_done(next++), VIRTIO_BLK_S_OK) << p.output();
    }
    // One read completes: the ring is live.
    h.queue(next, VIRTIO_BLK_T_IN, kWriteOffset, {}, encrypted);
    h.kick();
    ASSERT_EQ(h.wait_done(next), VIRTIO_BLK_S_OK) << p.output();
    if (!encrypted) {
      ASSERT_TRUE(std::equal(before.begin(), before.end(), h.data(next).begin()));
    }
    ++next;
    // A write is written into the ring but not published: a device may take
    // any published chain without a kick (its last pass re-reads avail->idx),
    // so a write published before the cut could be served, correctly, from
    // memory that was still whole. Then the cut; then, where the avail ring
    // survives it (data cut), the write is published; then the kick. Where the
    // rings are cut, the kick alone makes the device read the cut avail ring.
    h.queue(next, VIRTIO_BLK_T_OUT, kWriteOffset, pattern(kPage, 42), encrypted,
            /*publish=*/false);
    ASSERT_EQ(h.shrink(), 0) << std::strerror(errno);
    if (layout.rings + 0x300 <= kCutTo) h.publish(next);
    h.kick();
    EXPECT_TRUE(closed_by_peer(h.socket_fd(), 10000)) << "A's hostile connection stayed open\n"
                                                      << p.output();
  }
  EXPECT_TRUE(p.running()) << "iceblkd died (exit code " << p.exit_code() << ", signal "
                           << p.term_signal() << ", shell status " << 128 + p.term_signal() << ")\n"
                           << p.output();
  EXPECT_TRUE(test::eventually([&] {
    return p.output().find("export vm-a: the front-end shrank its guest memory") !=
           std::string::npos;
  })) << p.output();

  for (const auto& line : testing::lines_of(p.output())) {
    if (line.find("SIGBUS") != std::string::npos) std::printf("%s\n", line.c_str());
  }

  // Not a byte of the cut write reached A's image.
  EXPECT_EQ(pread_file(a_img, kWriteOffset, kPage), before);

  // A's next well-behaved front-end: verified I/O.
  {
    auto a = connect(a_sock);
    ASSERT_TRUE(a) << p.output();
    std::vector<uint8_t> back(kPage);
    ASSERT_TRUE(a->read(kWriteOffset, back));
    EXPECT_EQ(back, before);
    const auto data = pattern(3 * kPage, 43);
    ASSERT_TRUE(a->write(0, data));
    std::vector<uint8_t> back3(data.size());
    ASSERT_TRUE(a->read(0, back3));
    EXPECT_EQ(back3, data);
  }

  // Give B a little more time after the attack, then stop it.
  const uint64_t ops_at_attack_end = b_ops.load();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (b_ops.load() < ops_at_attack_end + 50 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  b_io.join();
  EXPECT_EQ(b_errors.load(), 0u);
  EXPECT_GE(b_ops.load(), ops_at_attack_end + 50) << "B's I/O stopped flowing";
  b.reset();
  EXPECT_TRUE(p.running()) << p.output();
  p.signal(SIGTERM);
  EXPECT_TRUE(p.wait(20000)) << p.output();
  EXPECT_TRUE(p.exited_normally()) << "status " << p.exit_code() << ", signal " << p.term_signal();
  std::filesystem::remove_all(dir);
}

TEST(UnsealedGuestMemory, DataBuffersCutUnderTheDeviceCloseOnlyThatConnection) {
  run_case(kDataCut, "sync");
}

TEST(UnsealedGuestMemory, DataBuffersCutUnderIoUringCloseOnlyThatConnection) {
  run_case(kDataCut, "io_uring");
}

TEST(UnsealedGuestMemory, EncryptedWriteFromCutBuffersWritesNothing) {
  run_case(kDataCut, "auto", /*encrypted=*/true);
}

TEST(UnsealedGuestMemory, RingsCutUnderTheDeviceCloseOnlyThatConnection) {
  run_case(kRingsCut, "auto");
}

// A polling worker is still spinning on the ring when the write is published
// after the cut: it takes the chain without a kick, and must fault on it the same.
TEST(UnsealedGuestMemory, DataBuffersCutUnderAPollingWorkerCloseOnlyThatConnection) {
  run_case(kDataCut, "sync", /*encrypted=*/false, /*poll_us=*/1000000);
}

TEST(UnsealedGuestMemory, RingsCutUnderAPollingWorkerCloseOnlyThatConnection) {
  run_case(kRingsCut, "sync", /*encrypted=*/false, /*poll_us=*/1000000);
}

}  // namespace
}  // namespace iceblk
