// The real iceblkd binary as a subprocess (path from CMake: ICEBLKD_PATH): the
// command line and its one-line errors, the options seen from a front-end (the
// driver library), socket in use, and SIGTERM in the middle of heavy I/O.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "iceblk/device.h"
#include "ice/key.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"

#ifndef ICEBLKD_PATH
#error "ICEBLKD_PATH must name the iceblkd binary"
#endif

namespace iceblk {
namespace {

using testing::lines_of;
using testing::Subprocess;
namespace drv = iceblk::driver;

using test::pattern;

class IceblkdCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("iceblkd-cli");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::vector<std::string> argv(std::initializer_list<std::string> args) const {
    std::vector<std::string> v{ICEBLKD_PATH};
    v.insert(v.end(), args);
    return v;
  }
  std::string log(const std::string& name) const { return dir_ + "/" + name + ".log"; }

  // Run iceblkd expecting a start-up failure: exit code != 0, exactly one line that
  // starts with "iceblkd: " and contains every needle.
  void expect_one_line_error(std::vector<std::string> args, std::initializer_list<std::string> needles) {
    SCOPED_TRACE(::testing::PrintToString(args));
    auto r = testing::run_to_exit(args, log("err"));
    EXPECT_NE(r.code, 0) << r.output;
    EXPECT_LT(r.code, 128) << "killed by a signal: " << r.output;
    const auto lines = lines_of(r.output);
    ASSERT_EQ(lines.size(), 1u) << r.output;
    EXPECT_EQ(lines[0].rfind("iceblkd: ", 0), 0u) << lines[0];
    for (const auto& n : needles) EXPECT_NE(lines[0].find(n), std::string::npos) << "'" << n << "' not in: " << lines[0];
  }

  static std::unique_ptr<drv::Device> connect(const std::string& socket, uint16_t nq = 0,
                                              const std::string& sw = {}, uint16_t queue_size = 128) {
    drv::ConnectOptions o;
    o.socket_path = socket;
    o.num_queues = nq;
    o.queue_size = queue_size;
    o.memory_size = 32 << 20;
    o.secure_world_socket = sw;
    o.reply_timeout_ms = 10000;
    auto d = drv::Device::connect(o);
    EXPECT_TRUE(d) << socket << ": " << d.error().to_string();
    return d ? std::move(*d) : nullptr;
  }

  // SIGTERM, then: exit code 0, not killed, socket gone.
  static void stop_cleanly(Subprocess& p, const std::string& socket, int sig = SIGTERM) {
    p.signal(sig);
    ASSERT_TRUE(p.wait(20000)) << "iceblkd did not exit after a signal; output:\n" << p.output();
    EXPECT_EQ(p.term_signal(), 0) << p.output();
    EXPECT_EQ(p.exit_code(), 0) << p.output();
    EXPECT_FALSE(std::filesystem::exists(socket)) << "socket file left behind";
  }

  std::string dir_;
};

// --- errors: one line, exit code != 0 ---------------------------------------------------

TEST_F(IceblkdCli, MissingImage) {
  const std::string sock = dir_ + "/s.sock";
  expect_one_line_error(argv({"--socket", sock, "--image", dir_ + "/missing.img"}),
                        {"missing.img", "does not exist", "--size"});
  expect_one_line_error(argv({"--socket", sock, "--image", dir_ + "/nodir/x.img", "--size", "1M"}),
                        {"nodir/x.img"});
  expect_one_line_error(argv({"--socket", sock, "--image", dir_ + "/ro.img", "--size", "1M", "--readonly"}),
                        {"ro.img", "read-only"});
  EXPECT_FALSE(std::filesystem::exists(sock));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ro.img"));
  // A socket that cannot be bound: the image created for it is removed again.
  expect_one_line_error(argv({"--socket", dir_ + "/nodir/s.sock", "--image", dir_ + "/new.img", "--size", "1M"}),
                        {"nodir/s.sock"});
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/new.img"));
  expect_one_line_error(argv({"--image", dir_ + "/x.img"}), {"--socket"});
  expect_one_line_error(argv({"--socket", sock}), {"--image"});
}

TEST_F(IceblkdCli, BadSize) {
  const std::string sock = dir_ + "/s.sock";
  const std::string img = dir_ + "/x.img";
  expect_one_line_error(argv({"--socket", sock, "--image", img, "--size", "1000"}), {"--size", "512"});
  expect_one_line_error(argv({"--socket", sock, "--image", img, "--size", "abc"}), {"--size", "abc"});
  expect_one_line_error(argv({"--socket", sock, "--image", img, "--size", "0"}), {"--size", "0"});
  expect_one_line_error(argv({"--socket", sock, "--image", img, "--size", "5X"}), {"--size", "X"});
  expect_one_line_error(argv({"--socket", sock, "--image", img, "--size", "-1M"}), {"--size"});
  expect_one_line_error(argv({"--socket", sock, "--image", img, "--size", "99999999999T"}), {"--size", "large"});
  EXPECT_FALSE(std::filesystem::exists(img));
  // An existing image smaller than --size is not silently grown.
  testing::write_file(img, std::string(4096, 'x'));
  expect_one_line_error(argv({"--socket", sock, "--image", img, "--size", "1M"}), {"x.img", "smaller"});
  EXPECT_EQ(std::filesystem::file_size(img), 4096u);
  // Empty or unaligned existing images.
  testing::write_file(img, "");
  expect_one_line_error(argv({"--socket", sock, "--image", img}), {"x.img", "empty"});
  testing::write_file(img, std::string(1000, 'x'));
  expect_one_line_error(argv({"--socket", sock, "--image", img}), {"x.img", "512"});
}

TEST_F(IceblkdCli, BadOptions) {
  const std::string sock = dir_ + "/s.sock";
  const std::string img = dir_ + "/x.img";
  auto base = [&](std::initializer_list<std::string> more) {
    auto v = argv({"--socket", sock, "--image", img, "--size", "1M"});
    v.insert(v.end(), more);
    return v;
  };
  expect_one_line_error(base({"--num-queues", "0"}), {"--num-queues"});
  expect_one_line_error(base({"--queue-size", "100"}), {"queue_size", "power of two"});
  expect_one_line_error(base({"--max-slots", "0"}), {"--max-slots"});
  expect_one_line_error(base({"--slot-offset", "60", "--max-slots", "8"}), {"slot range", "64"});
  expect_one_line_error(base({"--keys", "bogus"}), {"--keys"});
  expect_one_line_error(base({"--algorithms", "aes-999-xts"}), {"--algorithms", "aes-999-xts"});
  expect_one_line_error(base({"--algorithms", "aes-256-ecb"}), {"ECB", "--allow-ecb"});
  expect_one_line_error(base({"--bogus"}), {"--bogus"});
  expect_one_line_error(base({"--poll-us", "1000001"}), {"--poll-us"});
  expect_one_line_error(base({"--poll-us", "-1"}), {"--poll-us"});
  expect_one_line_error(base({"--crypto-threads", "9"}), {"--crypto-threads"});
  expect_one_line_error(base({"--crypto-threads", "-1"}), {"--crypto-threads"});
  expect_one_line_error(base({"--config", dir_ + "/c.json"}), {"--config"});
  expect_one_line_error(argv({"--config", dir_ + "/nope.json"}), {"nope.json"});
}

TEST_F(IceblkdCli, ConfigFileErrors) {
  const std::string cfg = dir_ + "/c.json";
  auto exp = [&](const std::string& name, int off, int n) {
    return "{\"name\": \"" + name + "\", \"socket\": \"" + dir_ + "/" + name + ".sock\", \"image\": \"" + dir_ +
           "/" + name + ".img\", \"size\": \"1M\", \"slot_offset\": " + std::to_string(off) +
           ", \"max_slots\": " + std::to_string(n) + "}";
  };
  testing::write_file(cfg, "{\"exports\": [" + exp("alpha", 0, 8) + ", " + exp("beta", 16, 8) + ", " +
                               exp("gamma", 4, 8) + "]}");
  expect_one_line_error(argv({"--config", cfg}), {"overlap", "'alpha'", "'gamma'", "[0, 8)", "[4, 12)"});
  for (const char* n : {"alpha", "beta", "gamma"}) {
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/" + n + ".sock")) << n;
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/" + n + ".img")) << n;
  }

  testing::write_file(cfg, "{\"exports\": [ {\"name\": \"a\", ");
  expect_one_line_error(argv({"--config", cfg}), {"c.json", "JSON"});
  testing::write_file(cfg, "{\"exports\": [" + exp("a", 0, 8) + "], \"extra\": 1}");
  expect_one_line_error(argv({"--config", cfg}), {"c.json", "extra"});
  testing::write_file(cfg, "{\"exports\": [{\"name\": \"a\", \"socket\": \"" + dir_ +
                               "/a.sock\", \"image\": \"x.img\", \"size\": \"12345\"}]}");
  expect_one_line_error(argv({"--config", cfg}), {"exports[0].size", "512"});
  testing::write_file(cfg, "{\"exports\": [" + exp("a", 0, 8) + ", " + exp("a", 8, 8) + "]}");
  expect_one_line_error(argv({"--config", cfg}), {"'a'", "twice"});
  testing::write_file(cfg, "{\"exports\": [{\"name\": \"a\", \"socket\": \"" + dir_ +
                               "/a.sock\", \"image\": \"x.img\", \"num_queues\": -3}]}");
  expect_one_line_error(argv({"--config", cfg}), {"num_queues"});
  testing::write_file(cfg, "{\"poll_us\": \"fast\", \"exports\": [" + exp("a", 0, 8) + "]}");
  expect_one_line_error(argv({"--config", cfg}), {"c.json", "poll_us", "unsigned"});
  testing::write_file(cfg, "{\"exports\": [{\"name\": \"a\", \"socket\": \"" + dir_ +
                               "/a.sock\", \"image\": \"x.img\", \"poll_us\": 5000000}]}");
  expect_one_line_error(argv({"--config", cfg}), {"'a'", "poll_us", "1000000"});
}

TEST_F(IceblkdCli, SocketInUse) {
  const std::string sock = dir_ + "/s.sock";
  const std::string img = dir_ + "/x.img";
  Subprocess first(argv({"--socket", sock, "--image", img, "--size", "4M"}), log("first"));
  ASSERT_GT(first.pid(), 0);
  ASSERT_TRUE(testing::wait_for_listener(sock)) << first.output();

  expect_one_line_error(argv({"--socket", sock, "--image", dir_ + "/y.img", "--size", "4M"}), {sock, "in use"});
  // The second one must not have removed the first one's socket, and removed the
  // image it had created.
  ASSERT_TRUE(std::filesystem::exists(sock));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/y.img"));
  ASSERT_TRUE(first.running());
  auto dev = connect(sock);
  ASSERT_TRUE(dev);
  ASSERT_TRUE(dev->write(0, pattern(4096, 1)));
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(dev->read(0, back));
  EXPECT_EQ(back, pattern(4096, 1));
  dev.reset();

  // A path that exists and is not a socket is refused too, and left alone.
  const std::string file = dir_ + "/not-a-socket";
  testing::write_file(file, "keep me");
  expect_one_line_error(argv({"--socket", file, "--image", img}), {file, "not a socket"});
  EXPECT_TRUE(std::filesystem::exists(file));

  stop_cleanly(first, sock);
  // A stale socket file (its server gone) is taken over.
  Subprocess again(argv({"--socket", sock, "--image", img}), log("again"));
  ASSERT_TRUE(testing::wait_for_listener(sock)) << again.output();
  stop_cleanly(again, sock, SIGINT);
}

// --- what a front-end sees ---------------------------------------------------------------

TEST_F(IceblkdCli, MinimalFormServesWritableWithInBandIce) {
  const std::string sock = dir_ + "/s.sock";
  const std::string img = dir_ + "/x.img";
  testing::write_file(img, std::string(1 << 20, '\0'));
  Subprocess p(argv({"--socket", sock, "--image", img}), log("min"));
  ASSERT_TRUE(testing::wait_for_listener(sock)) << p.output();
  {
    auto dev = connect(sock);
    ASSERT_TRUE(dev);
    EXPECT_TRUE(dev->ice());
    EXPECT_EQ(dev->key_mode(), drv::KeyMode::kInBand);
    EXPECT_EQ(dev->capacity_bytes(), 1u << 20);
    EXPECT_EQ(dev->num_queues(), 1);
    EXPECT_EQ(dev->config().slot_offset, 0);
    EXPECT_EQ(dev->config().max_slots, 32);
    bool xts = false;
    for (const auto& c : dev->capabilities()) xts = xts || c.alg == ice::Algorithm::kAesXts;
    EXPECT_TRUE(xts);
    const auto data = pattern(8192, 4);
    auto key = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, pattern(64, 5));
    ASSERT_TRUE(key);
    ASSERT_TRUE(dev->program_key(2, *key));
    ASSERT_TRUE(dev->write(65536, data, drv::Encryption{2, 16}));
    ASSERT_TRUE(dev->write(0, data));
    std::vector<uint8_t> back(8192);
    ASSERT_TRUE(dev->read(65536, back, drv::Encryption{2, 16}));
    EXPECT_EQ(back, data);
  }
  stop_cleanly(p, sock, SIGINT);
  EXPECT_NE(p.output().find("SIGINT"), std::string::npos) << p.output();
}

TEST_F(IceblkdCli, OptionsReachTheFrontEnd) {
  const std::string sock = dir_ + "/s.sock";
  const std::string img = dir_ + "/x.img";
  {
    Subprocess p(argv({"--socket", sock, "--image", img, "--size", "8M", "--num-queues", "3", "--queue-size", "64",
                       "--max-slots", "5", "--slot-offset", "7", "--algorithms", "aes-256-xts", "--serial",
                       "disk-7"}),
                 log("opts"));
    ASSERT_TRUE(testing::wait_for_listener(sock)) << p.output();
    // A ring larger than --queue-size is refused...
    drv::ConnectOptions o;
    o.socket_path = sock;
    o.queue_size = 128;
    EXPECT_FALSE(drv::Device::connect(o));
    // ... one of that size works.
    auto dev = connect(sock, 0, {}, 64);
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->capacity_bytes(), 8u << 20);
    EXPECT_EQ(dev->num_queues(), 3);
    EXPECT_EQ(dev->config().seg_max, 62u);  // queue_size - 2
    EXPECT_EQ(dev->config().slot_offset, 7);
    EXPECT_EQ(dev->config().max_slots, 5);
    ASSERT_FALSE(dev->capabilities().empty());
    for (const auto& c : dev->capabilities()) {
      EXPECT_EQ(c.alg, ice::Algorithm::kAesXts);
      EXPECT_EQ(c.key_size, ice::KeySize::k256);
    }
    auto id = dev->get_id();
    ASSERT_TRUE(id);
    EXPECT_EQ(*id, "disk-7");
    dev.reset();
    stop_cleanly(p, sock);
  }
  EXPECT_EQ(std::filesystem::file_size(img), 8u << 20);
  {
    Subprocess p(argv({"--socket", sock, "--image", img, "--readonly", "--no-ice"}), log("ro"));
    ASSERT_TRUE(testing::wait_for_listener(sock)) << p.output();
    auto dev = connect(sock);
    ASSERT_TRUE(dev);
    EXPECT_FALSE(dev->ice());
    EXPECT_EQ(dev->key_mode(), drv::KeyMode::kNone);
    EXPECT_EQ(dev->header_size(), 16u);
    EXPECT_TRUE(dev->has_feature(5));  // VIRTIO_BLK_F_RO
    EXPECT_FALSE(dev->write(0, pattern(4096, 1)));
    std::vector<uint8_t> back(4096);
    EXPECT_TRUE(dev->read(0, back));
    dev.reset();
    stop_cleanly(p, sock);
  }
  {
    Subprocess p(argv({"--socket", sock, "--image", img, "--keys", "secure-world"}), log("sw"));
    ASSERT_TRUE(testing::wait_for_listener(sock)) << p.output();
    EXPECT_TRUE(std::filesystem::exists(sock + ".sw"));
    auto dev = connect(sock, 1, sock + ".sw");
    ASSERT_TRUE(dev);
    EXPECT_EQ(dev->key_mode(), drv::KeyMode::kOutOfBand);
    ASSERT_TRUE(dev->add_key("k", {ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, pattern(64, 8)));
    const auto data = pattern(4096, 9);
    ASSERT_TRUE(dev->write(4096, data, drv::KeyRef{"k", 1}));
    std::vector<uint8_t> back(4096);
    ASSERT_TRUE(dev->read(4096, back, drv::KeyRef{"k", 1}));
    EXPECT_EQ(back, data);
    dev.reset();
    stop_cleanly(p, sock);
    EXPECT_FALSE(std::filesystem::exists(sock + ".sw"));
  }
}

// --- SIGTERM during I/O -------------------------------------------------------------------

// Writers keep many requests in flight on 2 queues, each write to its own 4 KiB
// block with its own content; SIGTERM arrives in the middle. Every write the device
// acknowledged (status OK) must be on the image afterwards.
TEST_F(IceblkdCli, SigtermDuringIoKeepsEveryAcknowledgedWrite) {
  constexpr uint64_t kBlock = 4096;
  constexpr uint64_t kBlocks = 8192;  // 32 MiB image
  constexpr int kRounds = 5;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::string sock = dir_ + "/s.sock";
    const std::string img = dir_ + "/r" + std::to_string(round) + ".img";
    Subprocess p(argv({"--socket", sock, "--image", img, "--size", std::to_string(kBlock * kBlocks),
                       "--num-queues", "2", "--queue-size", "128"}),
                 log("term" + std::to_string(round)));
    ASSERT_TRUE(testing::wait_for_listener(sock)) << p.output();
    auto dev = connect(sock, 2);
    ASSERT_TRUE(dev);

    std::mutex mu;
    std::condition_variable cv;
    std::vector<uint64_t> acked;  // block numbers
    uint64_t outstanding = 0, failures = 0;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> stop{false};
    const auto seed_of = [round](uint64_t blk) { return static_cast<uint32_t>(round * 1000003 + blk); };
    // Buffers must stay valid until their callbacks ran.
    std::vector<std::vector<uint8_t>> bufs(kBlocks);
    auto writer = [&](uint16_t q) {
      while (!stop.load()) {
        const uint64_t blk = next.fetch_add(1);
        if (blk >= kBlocks) break;
        {
          std::unique_lock lk(mu);
          cv.wait(lk, [&] { return outstanding < 96 || stop.load(); });
          if (stop.load()) break;
          ++outstanding;
        }
        bufs[blk] = pattern(kBlock, seed_of(blk));
        drv::Io io;
        io.op = drv::Op::kWrite;
        io.queue = q;
        io.offset = blk * kBlock;
        io.out = bufs[blk];
        Status st = dev->submit(std::move(io), [&, blk](Status s) {
          std::lock_guard lk(mu);
          if (s) {
            acked.push_back(blk);
          } else {
            ++failures;
          }
          --outstanding;
          cv.notify_all();
        });
        if (!st) {
          std::lock_guard lk(mu);
          --outstanding;
          ++failures;
          cv.notify_all();
          break;  // the back-end is gone
        }
      }
    };
    std::thread w0(writer, 0), w1(writer, 1);
    // Let I/O get going, then SIGTERM with requests in flight.
    {
      std::unique_lock lk(mu);
      cv.wait_for(lk, std::chrono::seconds(20), [&] { return acked.size() >= 200 + 150 * static_cast<size_t>(round); });
    }
    p.signal(SIGTERM);
    ASSERT_TRUE(p.wait(30000)) << "iceblkd did not exit after SIGTERM:\n" << p.output();
    // The writers notice the closed connection (submit or the callbacks fail).
    {
      std::unique_lock lk(mu);
      cv.wait_for(lk, std::chrono::seconds(20), [&] { return failures > 0 || next.load() >= kBlocks; });
    }
    stop = true;
    cv.notify_all();
    w0.join();
    w1.join();
    dev.reset();  // fails whatever is still in flight
    EXPECT_EQ(outstanding, 0u);

    EXPECT_EQ(p.term_signal(), 0) << p.output();
    EXPECT_EQ(p.exit_code(), 0) << p.output();
    EXPECT_FALSE(std::filesystem::exists(sock));
    EXPECT_NE(p.output().find("shut down cleanly"), std::string::npos) << p.output();
    EXPECT_GE(acked.size(), 200u);
    EXPECT_LT(acked.size(), kBlocks) << "all writes finished before SIGTERM: the test did not test anything";

    const int fd = ::open(img.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    size_t bad = 0;
    std::vector<uint8_t> got(kBlock);
    for (uint64_t blk : acked) {
      ASSERT_EQ(::pread(fd, got.data(), kBlock, static_cast<off_t>(blk * kBlock)), static_cast<ssize_t>(kBlock));
      if (got != pattern(kBlock, seed_of(blk))) ++bad;
    }
    // Blocks never acknowledged hold either nothing or exactly their write (a request
    // finished during the drain whose completion the front-end never saw), nothing else.
    size_t garbage = 0;
    const std::vector<uint8_t> zeros(kBlock, 0);
    for (uint64_t blk = 0; blk < std::min(next.load(), kBlocks); ++blk) {
      ASSERT_EQ(::pread(fd, got.data(), kBlock, static_cast<off_t>(blk * kBlock)), static_cast<ssize_t>(kBlock));
      if (got != zeros && got != pattern(kBlock, seed_of(blk))) ++garbage;
    }
    ::close(fd);
    EXPECT_EQ(bad, 0u) << "acknowledged writes missing from the image (of " << acked.size() << ")";
    EXPECT_EQ(garbage, 0u);
    std::printf("round %d: %zu writes acknowledged, %llu failed after SIGTERM\n", round, acked.size(),
                static_cast<unsigned long long>(failures));
  }
}

}  // namespace
}  // namespace iceblk
