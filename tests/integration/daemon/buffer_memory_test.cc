// Bounded buffer memory (issue 14, part 2; docs/threat-model.md): the real iceblkd
// with two exports. Export A (--max-buffer-memory 1M) gets its whole ring filled
// with the largest encrypted requests the driver's memory allows, kept full for a
// few seconds; export B does verified encrypted I/O at the same time. iceblkd's
// anonymous memory (RssAnon, sampled every few ms) stays within A's cap plus B's
// one small buffer plus a fixed slack over its value before the load; B sees zero
// errors; every request on A succeeds.
//
// Why RssAnon and not only VmHWM: a vhost-user device reads and writes the guest's
// shared memory (RssShmem), which counts in VmHWM but belongs to the VM. The
// daemon's own allocations are anonymous. Both are printed.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "base/sanitizers.h"
#include "iceblk/device.h"
#include "integration/daemon/subprocess.h"
#include "support/pattern.h"

#ifndef ICEBLKD_PATH
#error "ICEBLKD_PATH must name the iceblkd binary"
#endif

namespace iceblk {
namespace {

namespace drv = iceblk::driver;
using test::pattern;

constexpr uint64_t kCapA = 1 << 20;
// Allocator arenas, thread stacks touched deeper, log buffers: what the daemon may
// grow by under load besides the bounce buffers (documented in docs/iceblkd.md).
constexpr uint64_t kSlack = 2 << 20;

// A field of /proc/PID/status in bytes ("VmHWM:   1234 kB"), 0 if missing.
double mib(uint64_t bytes) {
  return static_cast<double>(bytes) / (1 << 20);
}

uint64_t status_bytes(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1)) * 1024;
  }
  return 0;
}

std::unique_ptr<drv::Device> connect(const std::string& socket, uint16_t queue_size,
                                     uint64_t memory) {
  drv::ConnectOptions o;
  o.socket_path = socket;
  o.num_queues = 1;
  o.queue_size = queue_size;
  o.memory_size = memory;
  o.reply_timeout_ms = 10000;
  auto d = drv::Device::connect(o);
  EXPECT_TRUE(d) << socket << ": " << d.error().to_string();
  return d ? std::move(*d) : nullptr;
}

TEST(BufferMemory, AFullRingOfLargeEncryptedRequestsStaysWithinTheCap) {
  const std::string dir = testing::make_temp_dir("iceblkd-bufmem");
  ASSERT_FALSE(dir.empty());
  const std::string a_sock = dir + "/a.sock", b_sock = dir + "/b.sock";
  testing::write_file(dir + "/cfg.json", R"({
    "engine": {"num_slots": 8, "buffer_memory": "8M"},
    "exports": [
      {"name": "a", "socket": ")" + a_sock + R"(", "image": ")" +
                                             dir + R"(/a.img", "size": "80M",
       "queue_size": 64, "slot_offset": 0, "max_slots": 4, "max_buffer_memory": "1M", "io_engine": "io_uring"},
      {"name": "b", "socket": ")" + b_sock + R"(", "image": ")" +
                                             dir + R"(/b.img", "size": "8M",
       "slot_offset": 4, "max_slots": 4}
    ]})");
  testing::Subprocess p({ICEBLKD_PATH, "--config", dir + "/cfg.json"}, dir + "/iceblkd.log");
  ASSERT_TRUE(testing::wait_for_listener(a_sock)) << p.output();
  ASSERT_TRUE(testing::wait_for_listener(b_sock)) << p.output();

  constexpr uint64_t kReq = 1 << 20;  // 1 MiB: four chunks each
  constexpr unsigned kDepth = 64;     // A's whole ring
  auto a = connect(a_sock, kDepth, (kDepth + 8) * kReq);
  auto b = connect(b_sock, 128, 8 << 20);
  ASSERT_TRUE(a && b);
  const ice::CryptoMode mode{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};
  ASSERT_TRUE(a->add_key("k", mode, pattern(64, 1)));
  ASSERT_TRUE(b->add_key("k", mode, pattern(64, 2)));
  // One encrypted request on each so both queues (and their pools) exist, then the
  // baseline.
  std::vector<uint8_t> small(4096);
  ASSERT_TRUE(a->write(0, pattern(4096, 3), drv::KeyRef{"k", 0}));
  ASSERT_TRUE(b->write(0, pattern(4096, 4), drv::KeyRef{"k", 0}));
  ASSERT_TRUE(b->read(0, small, drv::KeyRef{"k", 0}));
  const uint64_t anon0 = status_bytes(p.pid(), "RssAnon"), hwm0 = status_bytes(p.pid(), "VmHWM");
  ASSERT_GT(anon0, 0u);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> anon_max{anon0};
  std::thread sampler([&] {
    while (!stop.load()) {
      const uint64_t v = status_bytes(p.pid(), "RssAnon");
      if (v > anon_max.load()) anon_max = v;
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
  });

  // B: verified encrypted 4 KiB writes and reads, one at a time, all along.
  std::atomic<uint64_t> b_ops{0}, b_errors{0};
  std::thread b_io([&] {
    std::vector<uint8_t> back(4096);
    for (uint64_t i = 0; !stop.load(); ++i) {
      const uint64_t off = (i % 2048) * 4096;
      const auto data = pattern(4096, static_cast<uint32_t>(i));
      if (!b->write(off, data, drv::KeyRef{"k", off / 4096}) ||
          !b->read(off, back, drv::KeyRef{"k", off / 4096}) || back != data) {
        ++b_errors;
      }
      ++b_ops;
    }
  });

  // A: kDepth encrypted 1 MiB reads always in flight, resubmitted as they complete.
  std::vector<std::vector<uint8_t>> bufs(kDepth, std::vector<uint8_t>(kReq));
  std::mutex mu;
  std::condition_variable cv;
  unsigned outstanding = 0;
  uint64_t a_done = 0, a_errors = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  std::vector<unsigned> free_slots;
  for (unsigned i = 0; i < kDepth; ++i) free_slots.push_back(i);
  while (std::chrono::steady_clock::now() < deadline) {
    unsigned slot = 0;
    uint64_t done_so_far = 0;  // a_done is the completions' to write: read it under mu
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return !free_slots.empty(); });
      slot = free_slots.back();
      free_slots.pop_back();
      ++outstanding;
      done_so_far = a_done;
    }
    drv::Io io;
    io.op = drv::Op::kRead;
    io.offset = (done_so_far + slot) % 79 * kReq;
    io.in = bufs[slot];
    io.key = drv::KeyRef{"k", io.offset / 4096};
    const Status st = a->submit(std::move(io), [&, slot](Status s) {
      std::lock_guard lk(mu);
      if (s) {
        ++a_done;
      } else {
        ++a_errors;
      }
      --outstanding;
      free_slots.push_back(slot);
      cv.notify_all();
    });
    if (!st) {
      std::lock_guard lk(mu);
      ++a_errors;
      --outstanding;
      free_slots.push_back(slot);
      break;
    }
  }
  {
    std::unique_lock lk(mu);
    cv.wait_for(lk, std::chrono::seconds(30), [&] { return outstanding == 0; });
  }
  stop = true;
  b_io.join();
  sampler.join();
  const uint64_t hwm = status_bytes(p.pid(), "VmHWM"), shmem = status_bytes(p.pid(), "RssShmem");
  std::printf(
      "iceblkd: RssAnon %.1f -> max %.1f MiB (cap A %.1f MiB + slack %.1f MiB); VmHWM %.1f -> %.1f "
      "MiB "
      "(RssShmem, guest memory, %.1f MiB); A: %lu x 1 MiB reads, B: %lu verified ops\n",
      mib(anon0), mib(anon_max.load()), mib(kCapA), mib(kSlack), mib(hwm0), mib(hwm), mib(shmem),
      static_cast<unsigned long>(a_done), static_cast<unsigned long>(b_ops.load()));

  EXPECT_EQ(outstanding, 0u);
  EXPECT_EQ(a_errors, 0u);
  EXPECT_GE(a_done, kDepth) << "A never filled its ring";
  EXPECT_EQ(b_errors.load(), 0u);
  EXPECT_GT(b_ops.load(), 10u) << "B's I/O did not keep flowing";
#if ICEBLK_ASAN
  // ASan's allocator quarantine and its fake stacks (detect_stack_use_after_return)
  // add megabytes of anonymous memory of their own: the bound is the normal build's
  // to check (scripts/test.sh); here the run checks the rest (no errors, B flows).
  std::printf("RssAnon bound not checked under AddressSanitizer\n");
#else
  EXPECT_LE(anon_max.load(), anon0 + kCapA + 16 * 1024 + kSlack)
      << "iceblkd's anonymous memory grew beyond export A's buffer cap";
#endif

  a.reset();
  b.reset();
  p.signal(SIGTERM);
  EXPECT_TRUE(p.wait(20000)) << p.output();
  std::filesystem::remove_all(dir);
}

// The caps are checked at start-up, with one line naming the option.
TEST(BufferMemory, CapsBelowOneChunkPerQueueAreRefusedAtStartUp) {
  const std::string dir = testing::make_temp_dir("iceblkd-bufmem-cli");
  ASSERT_FALSE(dir.empty());
  const std::vector<std::string> base{
      ICEBLKD_PATH, "--socket", dir + "/s.sock", "--image", dir + "/i.img", "--size", "8M"};
  struct Case {
    std::vector<std::string> extra;
    std::string needle;
  };
  const Case cases[] = {
      {{"--max-buffer-memory", "100K"},
       "max_buffer_memory (--max-buffer-memory) 102400 gives each of its 1 queues"},
      {{"--num-queues", "2", "--max-buffer-memory", "256K"},
       "gives each of its 2 queues less than one chunk"},
      {{"--engine-buffer-memory", "4K"},
       "buffer_memory (--engine-buffer-memory) 4096 is below one chunk"},
      {{"--max-buffer-memory", "lots"}, "--max-buffer-memory"},
  };
  for (const Case& c : cases) {
    auto argv = base;
    argv.insert(argv.end(), c.extra.begin(), c.extra.end());
    SCOPED_TRACE(::testing::PrintToString(argv));
    const auto r = testing::run_to_exit(argv, dir + "/err.log");
    EXPECT_EQ(r.code, 1) << r.output;
    const auto lines = testing::lines_of(r.output);
    ASSERT_EQ(lines.size(), 1u) << r.output;
    EXPECT_NE(lines[0].find(c.needle), std::string::npos) << lines[0];
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace iceblk
