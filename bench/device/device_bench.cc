// Crypto threads (iceblkd --crypto-threads, issue 13), at the device level, no guest:
// a BlkDevice on a memory backend, its QueueProcessor fed by an in-process ring
// (tests/support/ring_harness.h) with QD requests of SIZE bytes always in flight,
// encrypted (AES-256-XTS, 4 KiB data units, the data in 4 KiB pages as a guest sends
// it). Two devices, one with no crypto threads (N = 0) and one with N, run side by
// side: configurations alternate in every round, each for SECONDS of wall clock.
//
// Reported per configuration and direction (medians over the rounds):
//   MB/s       requests x SIZE / wall clock;
//   CPU/req    the device's CPU per request: the queue worker's thread CPU inside
//              QueueProcessor::process() plus every other thread of the process
//              (the crypto threads), CLOCK_THREAD_CPUTIME_ID / CLOCK_PROCESS_CPUTIME_ID;
//              the driver side of the harness (building chains) is left out;
//   worker/req the queue worker's part of it: what bounds one queue's rate when the
//              crypto threads have cores of their own.
// And the AES part, for Amdahl: CryptContext::crypt of SIZE bytes in 4 KiB pages on
// one thread (CPU per call), i.e. the work that the pool splits.
//
//   device_bench [rounds=5] [seconds=1] [size_kib=128] [qd=8] [threads=1]
#include <fmt/format.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/block_backend.h"
#include "blk/device.h"
#include "blk/queue_processor.h"
#include "blk/wire.h"
#include "ice/crypt_pool.h"
#include "ice/engine.h"
#include "ice/key_blob.h"
#include "support/ring_harness.h"

namespace {

using namespace iceblk;

double clock_s(clockid_t c) {
  timespec t{};
  clock_gettime(c, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}
double wall() {
  return clock_s(CLOCK_MONOTONIC);
}
double thread_cpu() {
  return clock_s(CLOCK_THREAD_CPUTIME_ID);
}
double process_cpu() {
  return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "device_bench: {}\n", what);
  std::exit(1);
}

template <typename T>
T must(Result<T> r, const char* what) {
  if (!r) die(fmt::format("{}: {}", what, r.error().to_string()));
  return std::move(*r);
}

constexpr uint64_t kPage = 4096;

struct Sample {
  double mbps = 0, cpu_us = 0, worker_us = 0;
};

// One device (one export, one queue) with its ring and QD chains built once.
class Rig {
 public:
  Rig(unsigned crypt_threads, uint64_t size, unsigned qd) : size_(size), qd_(qd) {
    backend_ = must(backend::make_memory_backend(64 << 20, false), "memory backend");
    auto e = must(ice::Engine::create({}), "engine");
    engine_ = std::shared_ptr<ice::Engine>(std::move(e));
    blk::BlkDeviceConfig cfg;
    cfg.queue_size = 64;
    cfg.engine = engine_;
    cfg.vm = must(engine_->add_vm("vm", {0, 4}), "add_vm");
    cfg.max_buffer_memory = 16 << 20;
    if (crypt_threads > 0)
      cfg.crypt_pool = must(ice::CryptPool::create({crypt_threads}), "crypto threads");
    pool_ = cfg.crypt_pool.get();
    dev_ = must(blk::BlkDevice::create(cfg, backend_), "device");
    if (!dev_->set_features(dev_->offered_features())) die("features");
    test::RingOptions ro;
    ro.size = 64;
    ro.indirect = true;
    ro.mem_size = uint64_t{qd} * (size + 64 * 1024) + (8 << 20);
    ring_ = must(test::RingHarness::create(ro), "ring");
    proc_ = must(dev_->make_queue_processor(0), "queue processor");
    program_key();
    for (bool write : {true, false}) {
      for (unsigned i = 0; i < qd; ++i) build(write, i);
    }
  }

  // Requests of one direction, QD in flight, for `seconds` of wall clock.
  Sample run(bool write, double seconds) {
    auto& chains = write ? writes_ : reads_;
    auto& drv = ring_->driver();
    for (auto& c : chains) post(c);
    drv.publish();
    uint64_t done = 0;
    double in_process = 0;
    const double w0 = wall(), p0 = process_cpu(), t0 = thread_cpu();
    double now = w0;
    while (now - w0 < seconds) {
      const double c0 = thread_cpu();
      auto r = proc_->process(ring_->device());
      in_process += thread_cpu() - c0;
      if (!r) die("process: " + r.error().to_string());
      while (auto u = drv.get_used()) {
        ++done;
        Chain* c = by_head_[u->head];
        if (ring_->bytes(c->status, 1)[0] != blk::kStatusOk) die("a request failed");
        post(*c);
      }
      drv.publish();
      now = wall();
    }
    const double w1 = now, p1 = process_cpu(), t1 = thread_cpu();
    // Let the ones still in flight finish, uncounted.
    for (size_t left = chains.size(); left > 0;) {
      if (!proc_->process(ring_->device())) die("process");
      while (drv.get_used()) --left;
    }
    const double others = (p1 - p0) - (t1 - t0);  // crypto threads (nothing else runs)
    Sample s;
    s.mbps = static_cast<double>(done * size_) / (w1 - w0) / 1e6;
    s.cpu_us = (in_process + others) / static_cast<double>(done) * 1e6;
    s.worker_us = in_process / static_cast<double>(done) * 1e6;
    return s;
  }

  [[nodiscard]] uint64_t pieces_by_threads() const {
    return pool_ ? pool_->pieces_by_threads() : 0;
  }

 private:
  struct Chain {
    std::vector<virtio::Buffer> bufs;
    GuestAddr status{0};
  };

  void program_key() {
    ice::KeyBlobWire b{};
    b.alg = 0;                 // AES-XTS
    b.data_unit_size_exp = 3;  // 4 KiB
    b.key_size = 3;            // 256
    b.key_len = 64;
    for (int i = 0; i < 64; ++i) b.key[i] = static_cast<uint8_t>(i * 7 + 1);
    const auto hdr = blk::encode_header(dev_->header_size(), blk::kTypeIceProgramKey, 0, 0);
    std::vector<uint8_t> blob(sizeof b);
    std::memcpy(blob.data(), &b, sizeof b);
    Chain c;
    c.bufs.push_back(
        {must(ring_->alloc_bytes(hdr, 8), "alloc"), static_cast<uint32_t>(hdr.size()), false});
    c.bufs.push_back(
        {must(ring_->alloc_bytes(blob, 8), "alloc"), static_cast<uint32_t>(blob.size()), false});
    c.status = must(ring_->alloc(1, 0xA5, 8), "alloc");
    c.bufs.push_back({c.status, 1, true});
    (void)must(ring_->driver().add(c.bufs), "add");
    ring_->driver().publish();
    for (int i = 0; i < 100 && !ring_->driver().get_used(); ++i)
      (void)proc_->process(ring_->device());
    if (ring_->bytes(c.status, 1)[0] != blk::kStatusOk) die("PROGRAM_KEY failed");
  }

  // [header][SIZE bytes in 4 KiB pages][status], at its own place on the medium.
  void build(bool write, unsigned i) {
    Chain c;
    const uint64_t sector = uint64_t{i} * size_ / 512;
    const auto hdr = blk::encode_header(dev_->header_size(), write ? blk::kTypeOut : blk::kTypeIn,
                                        sector, 0, 1, sector * 512 / kPage);
    c.bufs.push_back(
        {must(ring_->alloc_bytes(hdr, 8), "alloc"), static_cast<uint32_t>(hdr.size()), false});
    for (uint64_t off = 0; off < size_; off += kPage) {
      c.bufs.push_back({must(ring_->alloc(kPage, static_cast<uint8_t>(off), kPage), "alloc"),
                        static_cast<uint32_t>(kPage), !write});
    }
    c.status = must(ring_->alloc(1, 0xA5, 8), "alloc");
    c.bufs.push_back({c.status, 1, true});
    (write ? writes_ : reads_).push_back(std::move(c));
  }

  void post(Chain& c) {
    const uint16_t head = must(ring_->driver().add(c.bufs, true), "add");
    by_head_[head] = &c;
  }

  uint64_t size_;
  unsigned qd_;
  std::shared_ptr<backend::BlockBackend> backend_;
  std::shared_ptr<ice::Engine> engine_;
  ice::CryptPool* pool_ = nullptr;
  std::unique_ptr<blk::BlkDevice> dev_;
  std::unique_ptr<test::RingHarness> ring_;
  std::unique_ptr<blk::QueueProcessor> proc_;
  std::vector<Chain> writes_, reads_;
  Chain* by_head_[64] = {};
};

// CPU of CryptContext::crypt over `size` bytes in 4 KiB pages (one thread): the AES
// part of a request, which the pool splits.
double aes_us_per_call(uint64_t size, double seconds) {
  std::vector<uint8_t> material(64);
  for (int i = 0; i < 64; ++i) material[i] = static_cast<uint8_t>(i * 7 + 1);
  ice::ProgrammedKey key(
      must(ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, material), "key"),
      1);
  std::vector<uint8_t> src(size, 1), dst(size);
  std::vector<iovec> pages;
  for (uint64_t off = 0; off < size; off += kPage) pages.push_back({src.data() + off, kPage});
  const iovec d{dst.data(), dst.size()};
  ice::CryptContext ctx;
  uint64_t n = 0;
  const double c0 = thread_cpu();
  double c = c0;
  while (c - c0 < seconds) {
    if (!ctx.crypt(key, ice::Direction::kEncrypt, Dun(n), pages, 0, {&d, 1}, 0, size)) die("crypt");
    ++n;
    c = thread_cpu();
  }
  return (c - c0) / static_cast<double>(n) * 1e6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 1.0;
  const uint64_t size = (argc > 3 ? std::strtoull(argv[3], nullptr, 0) : 128) * 1024;
  const unsigned qd = argc > 4 ? static_cast<unsigned>(std::atoi(argv[4])) : 8;
  const unsigned threads = argc > 5 ? static_cast<unsigned>(std::atoi(argv[5])) : 1;
  if (rounds < 1 || seconds <= 0 || size == 0 || size % kPage != 0 || qd < 1 || qd > 32 ||
      threads < 1 || threads > ice::kMaxCryptThreads) {
    die("usage: device_bench [rounds>=1] [seconds>0] [size_kib, multiple of 4] [qd 1..32] [threads "
        "1..8]");
  }
  Rig base(0, size, qd), split(threads, size, qd);
  struct Cell {
    std::vector<double> mbps, cpu, worker;
  } cells[2][2];  // [config][write]
  std::vector<double> aes;
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < 2; ++k) {
      const int cfg = (r + k) % 2;  // alternate which configuration goes first
      for (bool write : {true, false}) {
        const Sample s = (cfg == 0 ? base : split).run(write, seconds);
        Cell& c = cells[cfg][write ? 1 : 0];
        c.mbps.push_back(s.mbps);
        c.cpu.push_back(s.cpu_us);
        c.worker.push_back(s.worker_us);
      }
    }
    aes.push_back(aes_us_per_call(size, seconds / 4));
  }
  fmt::print(
      "{} KiB encrypted requests (AES-256-XTS, 4 KiB units, 4 KiB pages), QD {}, memory backend, "
      "one queue; "
      "median of {} rounds x {:.2f} s per cell, configurations alternating\n",
      size / 1024, qd, rounds, seconds);
  fmt::print("{:<6} {:>22} {:>22} {:>22} {:>22}\n", "", "MB/s N=0 / N=" + std::to_string(threads),
             "ratio (N/0)", "CPU us/req N=0 / N", "worker us/req N=0 / N");
  for (bool write : {true, false}) {
    const Cell& a = cells[0][write ? 1 : 0];
    const Cell& b = cells[1][write ? 1 : 0];
    fmt::print("{:<6} {:>10.0f} / {:>9.0f} {:>22.2f} {:>10.1f} / {:>9.1f} {:>10.1f} / {:>9.1f}\n",
               write ? "write" : "read", median(a.mbps), median(b.mbps),
               median(b.mbps) / median(a.mbps), median(a.cpu), median(b.cpu), median(a.worker),
               median(b.worker));
  }
  const double aes_us = median(aes);
  fmt::print(
      "AES part: CryptContext::crypt of {} KiB in 4 KiB pages = {:.1f} us CPU (one thread)\n",
      size / 1024, aes_us);
  for (bool write : {true, false}) {
    const double total = median(cells[0][write ? 1 : 0].cpu);
    fmt::print("{:<6} AES fraction of the N=0 CPU per request: {:.2f}\n", write ? "write" : "read",
               aes_us / total);
  }
  fmt::print("pieces crypted by the crypto threads: {}\n", split.pieces_by_threads());
  return 0;
}
