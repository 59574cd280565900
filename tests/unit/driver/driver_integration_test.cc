// The driver library (include/iceblk/device.h) against the real device: an in-process
// iceblkd (daemon::Daemon) serving a file image over a real vhost-user socket.
// Every request type, plain and encrypted, several queues, deep queues, the keyslot
// manager with more keys than slots, both key modes, reset/reconnect, typed errors,
// and the conformance suite.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "daemon/daemon.h"
#include "iceblk/conformance.h"
#include "iceblk/device.h"
#include "iceblk/keyslot_manager.h"
#include "support/pattern.h"
#include "support/reference_cipher.h"
#include "support/temp_dir.h"

namespace iceblk::driver {
namespace {

namespace fs = std::filesystem;

using test::pattern;

std::vector<uint8_t> key_bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> k(n);
  for (size_t i = 0; i < n; ++i) k[i] = static_cast<uint8_t>(seed * 37 + i * 3 + 1);
  return k;
}

const ice::CryptoMode kXts256{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};

struct DaemonSetup {
  blk::KeyMode keys = blk::KeyMode::kInBand;
  bool ice = true;
  uint16_t queues = 4;
  uint32_t slot_offset = 4;
  uint32_t max_slots = 3;
  uint32_t poll_us = 0;  // iceblkd --poll-us
  backend::FileEngine io_engine = backend::FileEngine::kSync;
};

class DriverIntegration : public ::testing::Test {
 protected:
  void start(DaemonSetup s) {
    dir_ = iceblk::test::make_temp_dir("iceblk-drv");
    daemon::ExportConfig e;
    e.name = "vm0";
    e.socket = dir_ + "/vm0.sock";
    e.image = dir_ + "/vm0.img";
    e.size = 16 << 20;
    e.num_queues = s.queues;
    e.queue_size = 256;
    e.ice = s.ice;
    e.keys = s.keys;
    e.slot_offset = s.slot_offset;
    e.max_slots = s.max_slots;
    e.secure_world_socket = s.keys == blk::KeyMode::kOutOfBand ? dir_ + "/vm0.sw" : "";
    e.io_engine = s.io_engine;
    daemon::DaemonConfig cfg;
    cfg.poll_us = s.poll_us;
    cfg.exports.push_back(e);
    auto d = daemon::Daemon::create(cfg);
    ASSERT_TRUE(d) << d.error().to_string();
    daemon_ = std::move(*d);
    ASSERT_TRUE(daemon_->start());
    socket_ = e.socket;
    sw_socket_ = e.secure_world_socket;
    image_ = e.image;
  }
  void TearDown() override {
    dev_.reset();
    if (daemon_) daemon_->shutdown();
    daemon_.reset();
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  ConnectOptions options(uint16_t queues = 1) const {
    ConnectOptions c;
    c.socket_path = socket_;
    c.num_queues = queues;
    c.queue_size = 128;
    c.memory_size = 64 << 20;
    c.secure_world_socket = sw_socket_;
    return c;
  }
  void connect(ConnectOptions c) {
    auto d = Device::connect(c);
    ASSERT_TRUE(d) << d.error().to_string();
    dev_ = std::move(*d);
  }
  // The image file as stored (the medium, not through the device).
  std::vector<uint8_t> medium(uint64_t off, size_t len) const {
    std::ifstream f(image_, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off));
    std::vector<uint8_t> v(len);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(len));
    return v;
  }

  std::string dir_, socket_, sw_socket_, image_;
  std::unique_ptr<daemon::Daemon> daemon_;
  std::unique_ptr<Device> dev_;
};

TEST_F(DriverIntegration, NegotiatesIceAndInBandKeysWithThe32ByteHeader) {
  start({});
  connect(options(0));
  EXPECT_TRUE(dev_->ice());
  EXPECT_EQ(dev_->key_mode(), KeyMode::kInBand);
  EXPECT_EQ(dev_->header_size(), 32u);
  EXPECT_EQ(dev_->num_queues(), 4);
  EXPECT_EQ(dev_->config().max_slots, 3);
  EXPECT_EQ(dev_->config().slot_offset, 4);
  EXPECT_EQ(dev_->capacity_bytes(), uint64_t{16} << 20);
  ASSERT_EQ(dev_->capabilities().size(), dev_->config().capability_num);
  EXPECT_NE(std::find(dev_->capabilities().begin(), dev_->capabilities().end(),
                      ice::Capability{ice::Algorithm::kAesXts, 3, ice::KeySize::k256}),
            dev_->capabilities().end());
}

TEST_F(DriverIntegration, PlainConnectionUsesThe16ByteHeaderAndRefusesEncryption) {
  start({});
  auto o = options();
  o.want_ice = false;
  connect(o);
  EXPECT_FALSE(dev_->ice());
  EXPECT_EQ(dev_->header_size(), 16u);
  EXPECT_EQ(dev_->key_mode(), KeyMode::kNone);
  auto p = pattern(8192, 1);
  ASSERT_TRUE(dev_->write(4096, p));
  std::vector<uint8_t> back(8192);
  ASSERT_TRUE(dev_->read(4096, back));
  EXPECT_EQ(back, p);
  EXPECT_EQ(medium(4096, 8192), p);
  auto st = dev_->write(0, p, Encryption{0, 0});
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kUnsupported);
  EXPECT_EQ(dev_->add_key("k", kXts256, key_bytes(64, 1)).error().code, Errc::kUnsupported);
  EXPECT_EQ(dev_->get_capabilities().error().code, Errc::kUnsupported);
}

TEST_F(DriverIntegration, EveryRequestTypePlainAndEncrypted) {
  start({});
  connect(options());
  // GET_ID, GET_CRYPTO_CAPABILITIES.
  auto id = dev_->get_id();
  ASSERT_TRUE(id) << id.error().to_string();
  EXPECT_EQ(*id, "vm0");
  auto caps = dev_->get_capabilities();
  ASSERT_TRUE(caps);
  EXPECT_EQ(*caps, dev_->capabilities());
  // Plain write / read / flush / write-zeroes / discard.
  auto p = pattern(65536, 2);
  ASSERT_TRUE(dev_->write(0, p));
  ASSERT_TRUE(dev_->flush());
  EXPECT_EQ(medium(0, p.size()), p);
  ASSERT_TRUE(dev_->write_zeroes(4096, 8192));
  std::vector<uint8_t> back(65536);
  ASSERT_TRUE(dev_->read(0, back));
  EXPECT_TRUE(std::all_of(back.begin() + 4096, back.begin() + 12288, [](uint8_t b) { return b == 0; }));
  EXPECT_TRUE(std::equal(back.begin(), back.begin() + 4096, p.begin()));
  EXPECT_TRUE(std::equal(back.begin() + 12288, back.end(), p.begin() + 12288));
  ASSERT_TRUE(dev_->discard(0, 65536));

  // Raw slot: PROGRAM_KEY, encrypted write/read, EVICT_KEY.
  auto kb = key_bytes(64, 3);
  auto key = ice::Key::create(kXts256, kb);
  ASSERT_TRUE(key);
  ASSERT_TRUE(dev_->program_key(1, *key));
  auto plain = pattern(16384, 4);
  ASSERT_TRUE(dev_->write(1 << 20, plain, Encryption{1, 256}));
  std::vector<uint8_t> dec(plain.size());
  ASSERT_TRUE(dev_->read(1 << 20, dec, Encryption{1, 256}));
  EXPECT_EQ(dec, plain);
  EXPECT_NE(medium(1 << 20, plain.size()), plain);
  // The medium holds AES-256-XTS with tweak le64(dun): check data unit 0 with EVP.
  EXPECT_EQ(medium(1 << 20, 4096), test::reference_xts(kb, 256, std::span(plain).first(4096), 4096));
  ASSERT_TRUE(dev_->evict_key(1));
  auto after = dev_->read(1 << 20, dec, Encryption{1, 256});
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, Errc::kIo);
  EXPECT_NE(after.error().message.find("read 16384 bytes at offset 1048576"), std::string::npos)
      << after.error().message;
  EXPECT_NE(after.error().message.find("IOERR"), std::string::npos);

  // Named key through the keyslot manager.
  ASSERT_TRUE(dev_->add_key("home", kXts256, key_bytes(64, 5)));
  ASSERT_TRUE(dev_->write(2 << 20, plain, KeyRef{"home", 512}));
  std::fill(dec.begin(), dec.end(), 0);
  ASSERT_TRUE(dev_->read(2 << 20, dec, KeyRef{"home", 512}));
  EXPECT_EQ(dec, plain);
  // Wrong DUN decrypts to something else.
  ASSERT_TRUE(dev_->read(2 << 20, dec, KeyRef{"home", 513}));
  EXPECT_NE(dec, plain);
}

TEST_F(DriverIntegration, ErrorsAreTypedAndNameTheRequest) {
  start({});
  connect(options());
  std::vector<uint8_t> buf(4096);
  auto beyond = dev_->read(dev_->capacity_bytes(), buf);
  ASSERT_FALSE(beyond);
  EXPECT_EQ(beyond.error().code, Errc::kOutOfRange);
  EXPECT_EQ(dev_->read(100, buf).error().code, Errc::kMisaligned);
  EXPECT_EQ(dev_->read(0, buf, 9).error().code, Errc::kInvalidArgument);
  // The device's own answers, through the raw path.
  RawRequest r;
  blk::IceHdr h{};
  h.out.type = 99;
  r.header.resize(32);
  std::memcpy(r.header.data(), &h, 32);
  auto res = dev_->execute_raw(r);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, blk::kStatusUnsupp);
  EXPECT_EQ(status_to_error(res->status, "x").error().code, Errc::kUnsupported);
  // A key of the wrong length: the message names the lengths, never the bytes.
  auto short_key = key_bytes(32, 0xab);
  auto st = dev_->add_key("k", kXts256, short_key);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kInvalidArgument);
  EXPECT_NE(st.error().message.find("64-byte key, got 32"), std::string::npos) << st.error().message;
  EXPECT_EQ(st.error().message.find(fmt::format("{:02x}{:02x}", short_key[0], short_key[1])), std::string::npos);
  // Named key: misaligned to its data unit, unknown name.
  ASSERT_TRUE(dev_->add_key("k", kXts256, key_bytes(64, 9)));
  std::vector<uint8_t> small(512);
  EXPECT_EQ(dev_->write(0, small, KeyRef{"k", 0}).error().code, Errc::kMisaligned);
  EXPECT_EQ(dev_->write(0, buf, KeyRef{"nope", 0}).error().code, Errc::kNotFound);
  // Encrypted I/O on an empty slot: the device says IOERR.
  EXPECT_EQ(dev_->write(0, buf, Encryption{2, 0}).error().code, Errc::kIo);
}

TEST_F(DriverIntegration, FourQueuesWithSixtyFourRequestsInFlightEach) {
  start({});
  connect(options(4));
  ASSERT_TRUE(dev_->add_key("k", kXts256, key_bytes(64, 7)));
  constexpr int kDepth = 64;
  constexpr size_t kBs = 4096;
  std::vector<std::vector<uint8_t>> data;
  for (int q = 0; q < 4; ++q) {
    for (int i = 0; i < kDepth; ++i) data.push_back(pattern(kBs, static_cast<uint32_t>(q * 1000 + i)));
  }
  std::vector<std::future<Status>> fs;
  for (uint16_t q = 0; q < 4; ++q) {
    for (int i = 0; i < kDepth; ++i) {
      const size_t n = q * kDepth + i;
      Io io;
      io.op = Op::kWrite;
      io.queue = q;
      io.offset = n * kBs;
      io.out = data[n];
      if (n % 2 == 0) io.key = KeyRef{"k", n};
      fs.push_back(dev_->submit(std::move(io)));
    }
  }
  for (auto& f : fs) ASSERT_TRUE(f.get());
  // Read back through other queues, also all in flight.
  std::vector<std::vector<uint8_t>> back(data.size(), std::vector<uint8_t>(kBs));
  std::atomic<int> done{0};
  for (size_t n = 0; n < data.size(); ++n) {
    Io io;
    io.op = Op::kRead;
    io.queue = static_cast<uint16_t>((n + 1) % 4);
    io.offset = n * kBs;
    io.in = back[n];
    if (n % 2 == 0) io.key = KeyRef{"k", n};
    ASSERT_TRUE(dev_->submit(std::move(io), [&](Status s) {
      EXPECT_TRUE(s) << s.error().to_string();
      ++done;
    }));
  }
  dev_->drain();
  EXPECT_EQ(done.load(), static_cast<int>(data.size()));
  for (size_t n = 0; n < data.size(); ++n) ASSERT_EQ(back[n], data[n]) << "request " << n;
  for (uint16_t q = 0; q < 4; ++q) EXPECT_GE(dev_->queue_stats(q).completed, uint64_t{2 * kDepth - 1});
  // Encrypted ones are not plaintext on the medium; plain ones are.
  EXPECT_NE(medium(0, kBs), data[0]);
  EXPECT_EQ(medium(kBs, kBs), data[1]);
}

TEST_F(DriverIntegration, KeyslotManagerWithMoreKeysThanSlotsFromManyThreads) {
  start({});  // 3 slots
  connect(options(2));
  constexpr int kKeys = 8;
  for (int k = 0; k < kKeys; ++k) {
    ASSERT_TRUE(dev_->add_key("k" + std::to_string(k), kXts256, key_bytes(64, static_cast<uint8_t>(10 + k))));
  }
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 24; ++i) {
        const int k = (t * 3 + i) % kKeys;
        const uint64_t off = (uint64_t(t) * 24 + i) * 4096;
        auto p = pattern(4096, static_cast<uint32_t>(t * 100 + i));
        const KeyRef ref{"k" + std::to_string(k), off / 4096};
        if (!dev_->write(off, p, ref, static_cast<uint16_t>(t % 2))) ++errors;
        std::vector<uint8_t> back(4096);
        if (!dev_->read(off, back, ref, static_cast<uint16_t>((t + 1) % 2)) || back != p) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(dev_->keyslots()->programs_done(), 3u);  // keys were swapped in and out
  ASSERT_TRUE(dev_->remove_key("k0"));
  EXPECT_FALSE(dev_->keyslots()->has_key("k0"));
}

TEST_F(DriverIntegration, ResetAndReconnectReprogramInBandKeys) {
  start({});
  connect(options(2));
  ASSERT_TRUE(dev_->add_key("k", kXts256, key_bytes(64, 21)));
  auto p = pattern(8192, 22);
  ASSERT_TRUE(dev_->write(0, p, KeyRef{"k", 0}));
  const uint64_t programs = dev_->keyslots()->programs_done();
  ASSERT_TRUE(dev_->reset());
  EXPECT_GT(dev_->keyslots()->programs_done(), programs);  // reprogrammed (spec §8)
  std::vector<uint8_t> back(8192);
  ASSERT_TRUE(dev_->read(0, back, KeyRef{"k", 0}));
  EXPECT_EQ(back, p);
  ASSERT_TRUE(dev_->reconnect());
  std::fill(back.begin(), back.end(), 0);
  ASSERT_TRUE(dev_->read(0, back, KeyRef{"k", 0}, 1));
  EXPECT_EQ(back, p);
}

TEST_F(DriverIntegration, OutOfBandKeysGoThroughTheSecureWorldAndSurviveReset) {
  start({.keys = blk::KeyMode::kOutOfBand, .slot_offset = 8, .max_slots = 2});
  connect(options(1));
  EXPECT_EQ(dev_->key_mode(), KeyMode::kOutOfBand);
  EXPECT_EQ(dev_->config().slot_offset, 8);
  EXPECT_EQ(dev_->program_key(0, *ice::Key::create(kXts256, key_bytes(64, 1))).error().code, Errc::kUnsupported);
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(dev_->add_key("k" + std::to_string(k), kXts256, key_bytes(64, static_cast<uint8_t>(30 + k))));
  }
  std::vector<std::vector<uint8_t>> data;
  for (int k = 0; k < 3; ++k) {
    data.push_back(pattern(4096, static_cast<uint32_t>(40 + k)));
    ASSERT_TRUE(dev_->write(uint64_t(k) * 4096, data[k], KeyRef{"k" + std::to_string(k), uint64_t(k)}));
  }
  // The engine holds the keys in the VM's physical range [8, 10).
  EXPECT_TRUE(daemon_->engine().lookup(PhysSlot{8}) || daemon_->engine().lookup(PhysSlot{9}));
  EXPECT_FALSE(daemon_->engine().lookup(PhysSlot{0}));
  const uint64_t programs = dev_->keyslots()->programs_done();
  ASSERT_TRUE(dev_->reset());
  EXPECT_EQ(dev_->keyslots()->programs_done(), programs);  // nothing reprogrammed: keys survived
  for (int k = 0; k < 3; ++k) {
    std::vector<uint8_t> back(4096);
    ASSERT_TRUE(dev_->read(uint64_t(k) * 4096, back, KeyRef{"k" + std::to_string(k), uint64_t(k)}));
    EXPECT_EQ(back, data[k]);
    EXPECT_NE(medium(uint64_t(k) * 4096, 4096), data[k]);
  }
}

TEST_F(DriverIntegration, InFlightRequestsFailWithClosedWhenTheDeviceGoesAway) {
  start({});
  connect(options());
  auto p = pattern(4096, 1);
  ASSERT_TRUE(dev_->write(0, p));
  daemon_->shutdown();
  // Either the request is refused at once, or it completes with kClosed; never hangs.
  auto f = dev_->submit([&] {
    Io io;
    io.op = Op::kWrite;
    io.out = p;
    return io;
  }());
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  auto st = f.get();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kClosed) << st.error().to_string();
}

TEST_F(DriverIntegration, ConformanceSuitePassesInBand) {
  start({.queues = 2, .slot_offset = 4, .max_slots = 4});
  ConformanceOptions o;
  o.socket_path = socket_;
  auto r = run_conformance(o);
  ASSERT_TRUE(r) << r.error().to_string();
  for (const auto& c : r->checks) EXPECT_NE(c.verdict, Verdict::kFail) << format_check(c);
  EXPECT_GT(r->passed, 60u);
  EXPECT_LE(r->skipped, 1u);  // only oob.secure_world (no channel in in-band mode)
}

// --poll-us: the queue workers spin on the rings (and on io_uring completions) with
// the driver's kicks suppressed; every check still passes.
TEST_F(DriverIntegration, ConformanceSuitePassesWithPolling) {
  start({.queues = 2,
         .slot_offset = 4,
         .max_slots = 4,
         .poll_us = 200,
         .io_engine = backend::FileEngine::kAuto});
  ConformanceOptions o;
  o.socket_path = socket_;
  auto r = run_conformance(o);
  ASSERT_TRUE(r) << r.error().to_string();
  for (const auto& c : r->checks) EXPECT_NE(c.verdict, Verdict::kFail) << format_check(c);
  EXPECT_GT(r->passed, 60u);
}

// The daemon-wide poll_us reaches the queue workers: at QD 1 each request follows the
// last completion inside the poll window, so the driver (which kicks only when the
// device asks) hardly kicks at all; without polling it kicks for every request.
TEST_F(DriverIntegration, PollingSuppressesKicksAtQueueDepthOne) {
  for (const uint32_t poll_us : {0u, 200'000u}) {
    SCOPED_TRACE(poll_us);
    start({.queues = 1, .poll_us = poll_us, .io_engine = backend::FileEngine::kAuto});
    connect(options(1));
    const auto data = pattern(4096, 9);
    std::vector<uint8_t> back(4096);
    constexpr int kRequests = 200;
    for (int i = 0; i < kRequests; ++i) {
      ASSERT_TRUE(dev_->write(static_cast<uint64_t>(i) * 4096, data));
      ASSERT_TRUE(dev_->read(static_cast<uint64_t>(i) * 4096, back));
      ASSERT_EQ(back, data);
    }
    const auto st = dev_->queue_stats(0);
    std::printf("poll_us %u: %llu kicks for %llu requests\n", poll_us,
                static_cast<unsigned long long>(st.kicks),
                static_cast<unsigned long long>(st.submitted));
    EXPECT_GE(st.completed, uint64_t{2 * kRequests});
    if (poll_us == 0) {
      EXPECT_GE(st.kicks, st.submitted * 9 / 10)
          << st.kicks << " kicks, " << st.submitted << " requests";
    } else {
      EXPECT_LT(st.kicks, st.submitted / 4)
          << st.kicks << " kicks, " << st.submitted << " requests";
    }
    TearDown();
    daemon_.reset();
    dir_.clear();
  }
}

TEST_F(DriverIntegration, ConformanceSuitePassesOutOfBand) {
  start({.keys = blk::KeyMode::kOutOfBand, .queues = 2, .slot_offset = 8, .max_slots = 4});
  ConformanceOptions o;
  o.socket_path = socket_;
  o.secure_world_socket = sw_socket_;
  auto r = run_conformance(o);
  ASSERT_TRUE(r) << r.error().to_string();
  for (const auto& c : r->checks) {
    EXPECT_NE(c.verdict, Verdict::kFail) << format_check(c);
    if (c.verdict == Verdict::kSkip) {
      EXPECT_EQ(c.name, "inband.*");
    }
  }
  EXPECT_GT(r->passed, 45u);
}

TEST_F(DriverIntegration, ConformanceReportsAMissingDevice) {
  start({});
  ConformanceOptions o;
  o.socket_path = dir_ + "/missing.sock";
  auto r = run_conformance(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("missing.sock"), std::string::npos);
}

}  // namespace
}  // namespace iceblk::driver
