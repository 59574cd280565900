// The driver library's synchronous calls against a hung back-end: iceblkd stopped
// with SIGSTOP (it holds the connection and never completes anything). Each call
// fails with Errc::kTimedOut after ConnectOptions::request_timeout, naming the
// request and its queue; an abandoned request does not write into the caller's
// buffer when the back-end wakes up and completes it later; the device works again.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "ice/key.h"
#include "iceblk/device.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"
#include "support/wait.h"

#ifndef ICEBLKD_PATH
#error "ICEBLKD_PATH must name the iceblkd binary"
#endif

namespace iceblk {
namespace {

namespace drv = iceblk::driver;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::pattern;
using testing::Subprocess;

const ice::CryptoMode kXts{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};

class DriverTimeout : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("iceblk-timeout");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    if (d_) d_->signal(SIGCONT);
    dev_.reset();
    d_.reset();
    fs::remove_all(dir_);
  }
  void start(std::initializer_list<std::string> more, const std::string& sw = {}) {
    std::vector<std::string> v{ICEBLKD_PATH, "--socket",       dir_ + "/vm.sock",
                               "--image",    dir_ + "/vm.img", "--size",
                               "4M",         "--num-queues",   "2"};
    v.insert(v.end(), more);
    d_ = std::make_unique<Subprocess>(v, dir_ + "/iceblkd.log");
    ASSERT_TRUE(testing::wait_for_listener(dir_ + "/vm.sock")) << d_->output();
    drv::ConnectOptions o;
    o.socket_path = dir_ + "/vm.sock";
    o.num_queues = 2;
    o.memory_size = 16 << 20;
    o.secure_world_socket = sw;
    o.request_timeout = 300ms;
    auto dev = drv::Device::connect(o);
    ASSERT_TRUE(dev) << dev.error().to_string();
    dev_ = std::move(*dev);
  }
  // SIGSTOP, and wait until every thread of it is stopped: the back-end is hung.
  void hang() {
    d_->signal(SIGSTOP);
    ASSERT_TRUE(test::eventually([&] {
      std::ifstream f("/proc/" + std::to_string(d_->pid()) + "/stat");
      std::string pid, comm, state;
      f >> pid >> comm >> state;
      return state == "T";
    })) << "iceblkd did not stop";
  }
  // Runs `call`, expecting kTimedOut after about the timeout with every needle.
  template <typename F>
  void expect_timeout(F call, std::initializer_list<std::string> needles) {
    const auto t0 = std::chrono::steady_clock::now();
    Status st = call();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - t0);
    ASSERT_FALSE(st) << "completed against a stopped back-end";
    EXPECT_EQ(st.error().code, Errc::kTimedOut) << st.error().to_string();
    EXPECT_GE(ms.count(), 290);
    EXPECT_LT(ms.count(), 5000);
    for (const auto& n : needles)
      EXPECT_NE(st.error().message.find(n), std::string::npos)
          << n << " not in: " << st.error().message;
  }

  std::string dir_;
  std::unique_ptr<Subprocess> d_;
  std::unique_ptr<drv::Device> dev_;
};

TEST_F(DriverTimeout, SyncCallsTimeOutNamingTheRequestAndRecover) {
  start({});
  ASSERT_TRUE(dev_->write(8192, pattern(4096, 1), 1));
  hang();  // the socket stays open, nothing completes
  expect_timeout([&] { return dev_->write(8192, pattern(4096, 2), 1); },
                 {"write 4096 bytes at offset 8192", "queue 1", "300 ms"});
  std::vector<uint8_t> buf(4096, 0xAA);
  expect_timeout([&] { return dev_->read(8192, buf, 0); },
                 {"read 4096 bytes at offset 8192", "queue 0"});
  expect_timeout([&] { return dev_->flush(0); }, {"flush", "queue 0"});
  auto key = ice::Key::create(kXts, pattern(64, 9));
  ASSERT_TRUE(key);
  expect_timeout([&] { return dev_->program_key(3, *key); }, {"program-key slot 3", "queue 0"});
  expect_timeout(
      [&]() -> Status {
        auto r = dev_->execute_raw(
            {.queue = 1, .header = std::vector<uint8_t>(32, 0), .out = {}, .in = {}});
        if (!r) return tl::unexpected(r.error());
        return {};
      },
      {"raw request type 0", "queue 1"});
  // The back-end wakes up and completes what it had: the abandoned read must not
  // land in `buf` (the caller was told it failed and may have reused it).
  d_->signal(SIGCONT);
  dev_->drain();
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(buf, std::vector<uint8_t>(4096, 0xAA));
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(dev_->read(8192, back, 1));
  EXPECT_EQ(back, pattern(4096, 2)) << "the abandoned write completed once the back-end woke up";
  ASSERT_TRUE(dev_->program_key(3, *key));
}

TEST_F(DriverTimeout, SecureWorldCallsTimeOutNamingTheSlot) {
  start({"--keys", "secure-world", "--secure-world-socket", dir_ + "/vm.sw", "--slot-offset", "8"},
        dir_ + "/vm.sw");
  ASSERT_TRUE(dev_->add_key("a", kXts, pattern(64, 3)));
  ASSERT_TRUE(dev_->write(0, pattern(4096, 4), drv::KeyRef{"a", 0}));
  ASSERT_TRUE(dev_->add_key("b", kXts, pattern(64, 5)));
  hang();
  expect_timeout(
      [&] {
        return dev_->write(4096, pattern(4096, 6), drv::KeyRef{"b", 1});
      },
      {"secure world set-key physical slot", "SET_KEY", "300 ms"});
}

}  // namespace
}  // namespace iceblk
