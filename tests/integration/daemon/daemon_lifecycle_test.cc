// iceblkd's Daemon library in-process, driven over its real unix sockets by the
// driver library (include/iceblk/device.h): several exports sharing one engine,
// disconnect/reconnect and device reset (in-band keys evicted and zeroised, data
// kept), a malformed front-end on one export while another serves I/O, shutdown.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "base/log.h"
#include "daemon/daemon.h"
#include "iceblk/device.h"
#include "ice/key.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"
#include "support/socket.h"
#include "support/wait.h"
#include "vhost_user/frontend.h"
#include "virtio/features.h"

namespace iceblk {
namespace {

using daemon::Daemon;
using daemon::DaemonConfig;
using daemon::ExportConfig;
namespace drv = iceblk::driver;

constexpr uint64_t kImageSize = 16 << 20;
const ice::CryptoMode kXts256{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};

using test::pattern;

ice::Key make_key(uint32_t seed) {
  auto k = ice::Key::create(kXts256, pattern(64, seed));
  EXPECT_TRUE(k) << k.error().to_string();
  return std::move(*k);
}

std::vector<uint8_t> pread_image(const std::string& path, uint64_t offset, size_t n) {
  std::vector<uint8_t> out(n);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path;
  if (fd < 0) return {};
  EXPECT_EQ(::pread(fd, out.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  ::close(fd);
  return out;
}

// The names of this process's threads (/proc/self/task/*/comm).
std::set<std::string> thread_names() {
  std::set<std::string> out;
  for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream f(t.path() / "comm");
    std::string n;
    if (std::getline(f, n)) out.insert(n);
  }
  return out;
}

bool slot_empty(Daemon& d, uint32_t phys) {
  auto k = d.engine().lookup(PhysSlot{phys});
  return !k && k.error().code == Errc::kNotFound;
}

using test::eventually;

// Captures spdlog output (the daemon's log lines) for assertions.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096)) {
    old_ = spdlog::default_logger();
    auto l = std::make_shared<spdlog::logger>("capture", sink_);
    l->set_level(spdlog::level::info);
    log::set_default_logger(l);
  }
  // The daemon's threads may still be logging (a disconnect seen at shutdown):
  // log::set_default_logger keeps the capture logger alive for them.
  ~LogCapture() { log::set_default_logger(old_); }
  [[nodiscard]] bool contains(const std::string& needle) const {
    for (const auto& line : sink_->last_formatted()) {
      if (line.find(needle) != std::string::npos) return true;
    }
    return false;
  }
  [[nodiscard]] std::string dump() const {
    std::string s;
    for (const auto& line : sink_->last_formatted()) s += line;
    return s;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> old_;
};

// Verified I/O on one export in the background, alternately plain and encrypted with
// slot 1 (which must hold a key), counting round trips that came back intact.
class VerifiedIo {
 public:
  explicit VerifiedIo(drv::Device& dev) : thread_([this, &dev] { run(dev); }) {}
  ~VerifiedIo() { stop(); }
  VerifiedIo(const VerifiedIo&) = delete;
  VerifiedIo& operator=(const VerifiedIo&) = delete;
  // Waits (up to 10 s) for at least 50 intact round trips, stops, and expects that
  // many and not a single failure.
  void expect_clean() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ok_.load() < 50 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop();
    EXPECT_GE(ok_.load(), 50u);
    EXPECT_EQ(failed_.load(), 0u);
  }

 private:
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void run(drv::Device& b) {
    for (uint32_t i = 0; !stop_.load(); ++i) {
      const uint64_t off = (i % 256) * 8192ull;
      const auto data = pattern(8192, i);
      const bool enc = (i % 2) != 0;
      Status w = enc ? b.write(off, data, drv::Encryption{1, off / 4096}, static_cast<uint16_t>(i % 2))
                     : b.write(off, data, static_cast<uint16_t>(i % 2));
      std::vector<uint8_t> back(8192);
      Status r = enc ? b.read(off, back, drv::Encryption{1, off / 4096}) : b.read(off, back);
      (w && r && back == data ? ok_ : failed_).fetch_add(1);
    }
  }
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> ok_{0}, failed_{0};
  std::thread thread_;  // last: starts once the counters exist
};

class DaemonLifecycle : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("iceblkd-life");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    if (daemon_) daemon_->shutdown();
    daemon_.reset();
    std::filesystem::remove_all(dir_);
  }

  ExportConfig make_export(const std::string& name, uint32_t slot_offset, uint32_t max_slots) {
    ExportConfig e;
    e.name = name;
    e.socket = dir_ + "/" + name + ".sock";
    e.image = dir_ + "/" + name + ".img";
    e.size = kImageSize;
    e.num_queues = 2;
    e.slot_offset = slot_offset;
    e.max_slots = max_slots;
    return e;
  }

  void start(DaemonConfig cfg) {
    auto d = Daemon::create(std::move(cfg));
    ASSERT_TRUE(d) << d.error().to_string();
    daemon_ = std::move(*d);
    ASSERT_TRUE(daemon_->start());
  }

  static std::unique_ptr<drv::Device> connect(const std::string& socket, const std::string& sw = {}) {
    drv::ConnectOptions o;
    o.socket_path = socket;
    o.num_queues = 0;
    o.memory_size = 16 << 20;
    o.secure_world_socket = sw;
    o.reply_timeout_ms = 10000;
    auto d = drv::Device::connect(o);
    EXPECT_TRUE(d) << socket << ": " << d.error().to_string();
    return d ? std::move(*d) : nullptr;
  }

  // A well-behaved front-end on `socket` connects, writes and reads back 4 KiB.
  static void expect_good_front_end(const std::string& socket) {
    auto a = connect(socket);
    ASSERT_TRUE(a);
    ASSERT_TRUE(a->write(0, pattern(4096, 3)));
    std::vector<uint8_t> back(4096);
    ASSERT_TRUE(a->read(0, back));
    EXPECT_EQ(back, pattern(4096, 3));
  }

  // Exports "a" (slots [0,8)) and "b" ([8,16)) served; `sa` gets a's socket. Returns a
  // front-end on b with slot 1 programmed, ready for VerifiedIo; null on failure.
  std::unique_ptr<drv::Device> start_a_and_b(std::string& sa) {
    DaemonConfig cfg;
    cfg.exports.push_back(make_export("a", 0, 8));
    cfg.exports.push_back(make_export("b", 8, 8));
    start(std::move(cfg));
    if (!daemon_) return nullptr;
    sa = daemon_->config().exports[0].socket;
    auto b = connect(daemon_->config().exports[1].socket);
    if (b && !b->program_key(1, make_key(5))) return nullptr;
    return b;
  }

  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
};

// --- disconnect / reconnect / reset ---------------------------------------------------

TEST_F(DaemonLifecycle, ReconnectKeepsDataAndEvictsInBandKeys) {
  DaemonConfig cfg;
  cfg.exports.push_back(make_export("vm0", 4, 8));
  start(std::move(cfg));
  const std::string sock = daemon_->config().exports[0].socket;
  const std::string image = daemon_->config().exports[0].image;

  const auto plain = pattern(8192, 1);
  const auto secret = pattern(16384, 2);
  constexpr uint64_t kPlainOff = 0;
  constexpr uint64_t kCryptOff = 1 << 20;
  constexpr uint8_t kSlot = 3;  // virtual; physical 4 + 3
  constexpr uint64_t kDun = 77;
  {
    auto dev = connect(sock);
    ASSERT_TRUE(dev);
    ASSERT_EQ(dev->key_mode(), drv::KeyMode::kInBand);
    ASSERT_TRUE(dev->write(kPlainOff, plain));
    ASSERT_TRUE(dev->program_key(kSlot, make_key(9)));
    EXPECT_FALSE(slot_empty(*daemon_, 4 + kSlot));
    ASSERT_TRUE(dev->write(kCryptOff, secret, drv::Encryption{kSlot, kDun}, 1));
    std::vector<uint8_t> back(secret.size());
    ASSERT_TRUE(dev->read(kCryptOff, back, drv::Encryption{kSlot, kDun}));
    ASSERT_EQ(back, secret);
    ASSERT_TRUE(dev->flush());
  }  // front-end disconnects

  // The device reset on disconnect evicts the in-band key (the server notices the
  // disconnect asynchronously).
  EXPECT_TRUE(eventually([&] { return slot_empty(*daemon_, 4 + kSlot); }));
  // Ciphertext on the image, not the plaintext.
  EXPECT_NE(pread_image(image, kCryptOff, secret.size()), secret);
  EXPECT_EQ(pread_image(image, kPlainOff, plain.size()), plain);

  auto dev = connect(sock);
  ASSERT_TRUE(dev);
  std::vector<uint8_t> back(plain.size());
  ASSERT_TRUE(dev->read(kPlainOff, back));
  EXPECT_EQ(back, plain);

  // Encrypted read with the now-empty slot: IOERR (spec §5: the slot must hold a key).
  std::vector<uint8_t> cback(secret.size(), 0xEE);
  auto r = dev->read(kCryptOff, cback, drv::Encryption{kSlot, kDun});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kIo) << r.error().to_string();

  // Program the same key again: decrypts correctly.
  ASSERT_TRUE(dev->program_key(kSlot, make_key(9)));
  ASSERT_TRUE(dev->read(kCryptOff, cback, drv::Encryption{kSlot, kDun}));
  EXPECT_EQ(cback, secret);

  // RESET_DEVICE on a live connection evicts too; the data stays.
  ASSERT_TRUE(dev->reset());  // the library reprograms only named keys, not raw slots
  EXPECT_TRUE(slot_empty(*daemon_, 4 + kSlot));
  r = dev->read(kCryptOff, cback, drv::Encryption{kSlot, kDun});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kIo);
  ASSERT_TRUE(dev->read(kPlainOff, back));
  EXPECT_EQ(back, plain);
}

TEST_F(DaemonLifecycle, ManyReconnectsInARow) {
  DaemonConfig cfg;
  cfg.exports.push_back(make_export("vm0", 0, 4));
  start(std::move(cfg));
  const std::string sock = daemon_->config().exports[0].socket;
  for (uint32_t i = 0; i < 10; ++i) {
    auto dev = connect(sock);
    ASSERT_TRUE(dev);
    if (i > 0) {
      std::vector<uint8_t> back(4096);
      ASSERT_TRUE(dev->read((i - 1) * 4096ull, back));
      EXPECT_EQ(back, pattern(4096, 100 + i - 1)) << i;
    }
    ASSERT_TRUE(dev->program_key(static_cast<uint8_t>(i % 4), make_key(i)));
    ASSERT_TRUE(dev->write(i * 4096ull, pattern(4096, 100 + i), static_cast<uint16_t>(i % 2)));
  }
}

// --- several exports sharing one engine, from a config file -------------------------

TEST_F(DaemonLifecycle, ConfigFileThreeExportsShareOneEngine) {
  const std::string path = dir_ + "/iceblkd.json";
  testing::write_file(path, R"({
    // comments are allowed
    "engine": {"num_slots": 32},
    "exports": [
      {"name": "a", "socket": ")" + dir_ + R"(/a.sock", "image": ")" + dir_ + R"(/a.img", "size": "16M",
       "slot_offset": 0, "max_slots": 8, "num_queues": 2},
      {"name": "b", "socket": ")" + dir_ + R"(/b.sock", "image": ")" + dir_ + R"(/b.img", "size": "16M",
       "slot_offset": 8, "max_slots": 8},
      {"name": "c", "socket": ")" + dir_ + R"(/c.sock", "image": ")" + dir_ + R"(/c.img", "size": "16M",
       "slot_offset": 16, "max_slots": 8, "keys": "secure-world",
       "secure_world_socket": ")" + dir_ + R"(/c.sw"}
    ]
  })");
  auto cfg = daemon::load_config_file(path);
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  start(std::move(*cfg));
  ASSERT_EQ(daemon_->num_exports(), 3u);

  auto a = connect(dir_ + "/a.sock");
  auto b = connect(dir_ + "/b.sock");
  auto c = connect(dir_ + "/c.sock", dir_ + "/c.sw");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->key_mode(), drv::KeyMode::kInBand);
  EXPECT_EQ(b->key_mode(), drv::KeyMode::kInBand);
  EXPECT_EQ(c->key_mode(), drv::KeyMode::kOutOfBand);
  EXPECT_EQ(a->num_queues(), 2);
  EXPECT_EQ(b->config().slot_offset, 8);
  EXPECT_EQ(c->config().slot_offset, 16);
  EXPECT_EQ(c->config().max_slots, 8);
  // Each queue's worker is named for its queue and export (top -H; the benchmarks
  // pin a churning VM's worker by it).
  EXPECT_TRUE(eventually([] {
    const auto n = thread_names();
    return n.count("vq0:a") && n.count("vq1:a") && n.count("vq0:b") && n.count("vq0:c");
  })) << fmt::format("{}", fmt::join(thread_names(), ", "));

  // Each serves its own image: the same offset gets different data on each.
  const std::string names[3] = {"a", "b", "c"};
  drv::Device* devs[3] = {a.get(), b.get(), c.get()};
  for (uint32_t i = 0; i < 3; ++i) ASSERT_TRUE(devs[i]->write(8192, pattern(4096, 10 + i)));
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(pread_image(dir_ + "/" + names[i] + ".img", 8192, 4096), pattern(4096, 10 + i)) << names[i];
  }

  // Keys: in-band on a and b (both their virtual slot 0 = physical 0 and 8), out of
  // band on c (named key through the secure world).
  const auto da = pattern(8192, 20), db = pattern(8192, 21), dc = pattern(8192, 22);
  ASSERT_TRUE(a->program_key(0, make_key(30)));
  ASSERT_TRUE(b->program_key(0, make_key(31)));
  ASSERT_TRUE(c->add_key("ck", kXts256, pattern(64, 32)));
  ASSERT_TRUE(a->write(1 << 20, da, drv::Encryption{0, 5}));
  ASSERT_TRUE(b->write(1 << 20, db, drv::Encryption{0, 5}));
  ASSERT_TRUE(c->write(1 << 20, dc, drv::KeyRef{"ck", 5}));
  EXPECT_FALSE(slot_empty(*daemon_, 0));
  EXPECT_FALSE(slot_empty(*daemon_, 8));
  // The same key bytes on a's and b's slots would still be different slots; each
  // export's slot 0 is its own physical slot.
  std::vector<uint8_t> back(8192);

  // a reconnects: a's in-band key goes, b's and c's stay and keep decrypting.
  a.reset();
  a = connect(dir_ + "/a.sock");
  ASSERT_TRUE(a);
  EXPECT_TRUE(slot_empty(*daemon_, 0));
  EXPECT_FALSE(slot_empty(*daemon_, 8));
  auto r = a->read(1 << 20, back, drv::Encryption{0, 5});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kIo);
  ASSERT_TRUE(b->read(1 << 20, back, drv::Encryption{0, 5}));
  EXPECT_EQ(back, db);
  ASSERT_TRUE(c->read(1 << 20, back, drv::KeyRef{"ck", 5}));
  EXPECT_EQ(back, dc);

  // b cannot reach a's or c's physical slots: its slot 8 would be outside its range.
  r = b->read(1 << 20, back, drv::Encryption{8, 5});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kIo);

  // a programs again and reads its own data.
  ASSERT_TRUE(a->program_key(0, make_key(30)));
  ASSERT_TRUE(a->read(1 << 20, back, drv::Encryption{0, 5}));
  EXPECT_EQ(back, da);

  // c's out-of-band key survives c's own reconnect (it belongs to the secure world).
  c.reset();
  c = connect(dir_ + "/c.sock", dir_ + "/c.sw");
  ASSERT_TRUE(c);
  EXPECT_FALSE(slot_empty(*daemon_, 16));
}

// --- malformed front-end on one export while another serves I/O ---------------------

using test::closed_by_peer;
using test::raw_connect;


TEST_F(DaemonLifecycle, MalformedFrontEndOnOneExportDoesNotDisturbAnother) {
  LogCapture logs;
  std::string sa;
  auto b = start_a_and_b(sa);
  ASSERT_TRUE(b);
  VerifiedIo io(*b);

  struct Garbage {
    const char* what;
    std::vector<uint8_t> bytes;
  };
  std::vector<Garbage> cases;
  cases.push_back({"random bytes", pattern(4096, 77)});
  {
    // Header claiming an enormous payload.
    std::vector<uint8_t> h(12, 0);
    const uint32_t req = 1, flags = 1, size = 0xFFFFFFF0u;
    std::memcpy(h.data(), &req, 4);
    std::memcpy(h.data() + 4, &flags, 4);
    std::memcpy(h.data() + 8, &size, 4);
    cases.push_back({"huge size", h});
  }
  {
    // Unknown request id with a bad version.
    std::vector<uint8_t> h(12, 0);
    const uint32_t req = 9999, flags = 7, size = 0;
    std::memcpy(h.data(), &req, 4);
    std::memcpy(h.data() + 4, &flags, 4);
    std::memcpy(h.data() + 8, &size, 4);
    cases.push_back({"unknown request", h});
  }
  {
    // SET_MEM_TABLE (5) claiming 8 regions, without any fd.
    std::vector<uint8_t> m(12 + 8 + 8 * 32, 0xAB);
    const uint32_t req = 5, flags = 1, size = 8 + 8 * 32, n = 8, pad = 0;
    std::memcpy(m.data(), &req, 4);
    std::memcpy(m.data() + 4, &flags, 4);
    std::memcpy(m.data() + 8, &size, 4);
    std::memcpy(m.data() + 12, &n, 4);
    std::memcpy(m.data() + 16, &pad, 4);
    cases.push_back({"mem table without fds", m});
  }
  for (const auto& g : cases) {
    SCOPED_TRACE(g.what);
    UniqueFd s = raw_connect(sa);
    ASSERT_TRUE(s);
    ASSERT_EQ(::send(s.get(), g.bytes.data(), g.bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(g.bytes.size()));
    ASSERT_TRUE(closed_by_peer(s.get())) << "the daemon kept a malformed connection open";
    // A good front-end is accepted on A right after.
    expect_good_front_end(sa);
  }
  // B kept serving without a single failure meanwhile.
  io.expect_clean();
  // Each bad connection was logged.
  EXPECT_TRUE(logs.contains("vhost-user connection closed")) << logs.dump();
}

// A front-end must not be able to shrink guest memory under the device: touching
// the cut pages would raise SIGBUS and end every VM the daemon serves. Memory that is
// not sealed F_SEAL_SHRINK is refused at SET_MEM_TABLE; sealed memory cannot shrink.
TEST_F(DaemonLifecycle, GuestMemoryThatCouldShrinkIsRefused) {
  LogCapture logs;
  std::string sa;
  auto b = start_a_and_b(sa);
  ASSERT_TRUE(b);
  VerifiedIo io(*b);

  constexpr uint64_t kSize = 1 << 20;
  auto hostile = [&](unsigned memfd_flags, int seals) {
    UniqueFd mem(::memfd_create("hostile", MFD_CLOEXEC | memfd_flags));
    EXPECT_TRUE(mem);
    EXPECT_EQ(::ftruncate(mem.get(), kSize), 0);
    if (seals != 0) {
      EXPECT_EQ(::fcntl(mem.get(), F_ADD_SEALS, seals), 0);
    }
    auto fe = vhost_user::Frontend::connect(sa);
    EXPECT_TRUE(fe);
    auto n = (*fe)->handshake(1ull << virtio::kFeatureVersion1);
    EXPECT_TRUE(n) << n.error().to_string();
    const vhost_user::SharedRegion r{0, kSize, 0x7f0000000000ull, 0, mem.get()};
    Status st = (*fe)->set_mem_table(std::span(&r, 1));
    return std::make_pair(std::move(mem), st);
  };
  {
    SCOPED_TRACE("an unsealed memfd");
    auto [mem, st] = hostile(0, 0);
    ASSERT_FALSE(st) << "unsealed guest memory was accepted";
    // vhost-user tells the front-end only "ack 1"; the daemon's log says why.
    EXPECT_TRUE(logs.contains("not sealed with F_SEAL_SHRINK")) << logs.dump();
  }
  {
    SCOPED_TRACE("a memfd sealed against growing only");
    auto [mem, st] = hostile(MFD_ALLOW_SEALING, F_SEAL_GROW);
    ASSERT_FALSE(st) << "guest memory that can shrink was accepted";
  }
  {
    SCOPED_TRACE("a memfd sealed F_SEAL_SHRINK, as QEMU seals guest RAM");
    auto [mem, st] = hostile(MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_GROW);
    ASSERT_TRUE(st) << st.error().to_string();
    // The attack of the report: cut the file down to a few pages. The seal stops it.
    EXPECT_NE(::ftruncate(mem.get(), 4 * 4096), 0);
    EXPECT_EQ(errno, EPERM);
  }
  // A's next well-behaved front-end works, and B never saw an error.
  expect_good_front_end(sa);
  io.expect_clean();
}

// --- shutdown ---------------------------------------------------------------------------

TEST_F(DaemonLifecycle, ShutdownZeroisesKeysAndRemovesSockets) {
  DaemonConfig cfg;
  cfg.exports.push_back(make_export("a", 0, 4));
  cfg.exports.push_back(make_export("b", 4, 4));
  start(std::move(cfg));
  const std::string sa = daemon_->config().exports[0].socket;
  const std::string sb = daemon_->config().exports[1].socket;
  auto a = connect(sa);
  auto b = connect(sb);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->program_key(0, make_key(1)));
  ASSERT_TRUE(b->program_key(3, make_key(2)));
  ASSERT_TRUE(a->write(0, pattern(4096, 1)));
  EXPECT_FALSE(slot_empty(*daemon_, 0));
  EXPECT_FALSE(slot_empty(*daemon_, 7));

  daemon_->shutdown();
  for (uint32_t s = 0; s < daemon_->engine().num_slots(); ++s) EXPECT_TRUE(slot_empty(*daemon_, s)) << s;
  EXPECT_FALSE(std::filesystem::exists(sa));
  EXPECT_FALSE(std::filesystem::exists(sb));
  EXPECT_EQ(pread_image(daemon_->config().exports[0].image, 0, 4096), pattern(4096, 1));
  // The front-ends see the back-end gone.
  std::vector<uint8_t> back(4096);
  EXPECT_FALSE(a->read(0, back));
  daemon_->shutdown();  // idempotent
}

TEST_F(DaemonLifecycle, ShutdownWithAStalledPeerAndAWaitingOne) {
  DaemonConfig cfg;
  cfg.exports.push_back(make_export("a", 0, 4));
  start(std::move(cfg));
  const std::string sa = daemon_->config().exports[0].socket;
  // A peer that sent half a header and stalls, and a second one waiting behind it.
  UniqueFd stalled = raw_connect(sa);
  ASSERT_TRUE(stalled);
  const uint32_t half[1] = {1};
  ASSERT_EQ(::send(stalled.get(), half, sizeof half, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof half));
  UniqueFd waiting = raw_connect(sa);
  ASSERT_TRUE(waiting);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));

  const auto t0 = std::chrono::steady_clock::now();
  daemon_->shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_TRUE(closed_by_peer(stalled.get(), 1000));
  EXPECT_TRUE(closed_by_peer(waiting.get(), 1000));
  EXPECT_FALSE(std::filesystem::exists(sa));
}

TEST_F(DaemonLifecycle, CreateFailureLeavesNothingBound) {
  DaemonConfig cfg;
  cfg.exports.push_back(make_export("a", 0, 4));
  cfg.exports.push_back(make_export("b", 4, 4));
  cfg.exports[1].image = dir_ + "/no/such/dir/b.img";
  auto d = Daemon::create(cfg);
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find("export 'b'"), std::string::npos) << d.error().message;
  EXPECT_FALSE(std::filesystem::exists(cfg.exports[0].socket));
  // ... and the same config with the image fixed works (nothing left bound).
  cfg.exports[1].image = dir_ + "/b.img";
  start(std::move(cfg));
}

// --poll-us in the JSON config: a daemon-wide default (top-level poll_us) that an
// export's own poll_us overrides, 0 included; validate() bounds both.
TEST(DaemonConfigPolling, DaemonWideDefaultAndPerExportOverride) {
  auto c = daemon::parse_config_text(R"({"poll_us": 30, "exports": [
      {"name": "a", "socket": "/tmp/a.sock", "image": "a.img", "poll_us": 0},
      {"name": "b", "socket": "/tmp/b.sock", "image": "b.img", "slot_offset": 32},
      {"name": "c", "socket": "/tmp/c.sock", "image": "c.img", "ice": false, "poll_us": 500}]})",
                                     "t.json");
  ASSERT_TRUE(c) << c.error().to_string();
  ASSERT_TRUE(daemon::validate(*c));
  EXPECT_EQ(c->poll_us, 30u);
  EXPECT_EQ(c->exports[0].poll_us, std::optional<uint32_t>(0));
  EXPECT_EQ(c->exports[1].poll_us, std::nullopt);  // the daemon's 30
  EXPECT_EQ(c->exports[2].poll_us, std::optional<uint32_t>(500));
  c->poll_us = daemon::kMaxPollUs + 1;
  EXPECT_FALSE(daemon::validate(*c));
  c->poll_us = 0;
  c->exports[2].poll_us = daemon::kMaxPollUs + 1;
  auto st = daemon::validate(*c);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message.find("'c'"), std::string::npos) << st.error().message;
}

// --crypto-threads in the JSON config: engine "crypt_threads", bounded by validate().
TEST(DaemonConfigCryptoThreads, EngineKeyAndBound) {
  auto c = daemon::parse_config_text(R"({"engine": {"crypt_threads": 2}, "exports": [
      {"name": "a", "socket": "/tmp/a.sock", "image": "a.img"}]})",
                                     "t.json");
  ASSERT_TRUE(c) << c.error().to_string();
  ASSERT_TRUE(daemon::validate(*c));
  EXPECT_EQ(c->crypt_threads, 2u);
  auto d = daemon::parse_config_text(
      R"({"exports": [{"name": "a", "socket": "/tmp/a.sock", "image": "a.img"}]})", "t.json");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->crypt_threads, 0u) << "default: no crypto threads";
  c->crypt_threads = ice::kMaxCryptThreads + 1;
  auto st = daemon::validate(*c);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message.find("crypt_threads"), std::string::npos) << st.error().message;
  auto bad = daemon::parse_config_text(R"({"engine": {"crypt_threads": -1}, "exports": [
      {"name": "a", "socket": "/tmp/a.sock", "image": "a.img"}]})",
                                       "t.json");
  EXPECT_FALSE(bad);
}

// A size too large for 64 bits is refused like any bad value: kInvalidArgument, naming
// the field (it was kOverflow, which fuzz_config's "every refusal is kInvalidArgument"
// property caught).
TEST(DaemonConfigSizes, TooLargeIsABadValueNamingTheField) {
  const std::string export_base = R"("name": "a", "socket": "/tmp/a.sock", "image": "a.img")";
  const std::pair<std::string, std::string> cases[] = {
      {R"({"exports": [{)" + export_base + R"(, "size": "40888888888888888G"}]})", "exports[0].size"},
      {R"({"exports": [{)" + export_base + R"(, "max_buffer_memory": "99999999999T"}]})",
       "max_buffer_memory"},
      {R"({"engine": {"buffer_memory": "18446744073709551616"}, "exports": [{)" + export_base + "}]}",
       "buffer_memory"},
  };
  for (const auto& [text, field] : cases) {
    SCOPED_TRACE(text);
    auto c = daemon::parse_config_text(text, "t.json");
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code, Errc::kInvalidArgument) << c.error().to_string();
    EXPECT_NE(c.error().message.find(field), std::string::npos) << c.error().message;
    EXPECT_NE(c.error().message.find("too large"), std::string::npos) << c.error().message;
  }
}

}  // namespace
}  // namespace iceblk
