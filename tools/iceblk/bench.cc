#include "bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

namespace iceblk::cli {

using Clock = std::chrono::steady_clock;

void add_bench_options(CLI::App* sub, BenchOptions& b) {
  sub->add_option("--rw", b.rw, "read, write, randread, randwrite or randrw")
      ->check(CLI::IsMember({"read", "write", "randread", "randwrite", "randrw"}));
  sub->add_option("--bs", b.bs, "block size (e.g. 4K, 64K, 1M)");
  sub->add_option("--iodepth", b.iodepth, "requests in flight per queue")->check(CLI::Range(1, 4096));
  sub->add_option("--runtime", b.runtime, "seconds to run (default 5 unless --size)");
  sub->add_option("--size", b.size, "total bytes to transfer instead of a runtime");
  sub->add_option("--span", b.span, "bytes of the device to spread I/O over (default: all)");
  sub->add_option("--encrypt", b.encrypt, "on or off: inline encryption with a random key")
      ->check(CLI::IsMember({"on", "off"}));
  sub->add_option("--rwmixread", b.rwmixread, "randrw: percentage of reads")->check(CLI::Range(0, 100));
  sub->add_option("--seed", b.seed, "random offset seed");
  sub->add_flag("--key-churn", b.key_churn,
                "no I/O: PROGRAM_KEY then EVICT_KEY of a random key on virtual slot 0 in a loop, "
                "for --runtime seconds (the key-churn load of bench/run_e2e_bench.sh --scale)");
  sub->add_option("--key-churn-rate", b.key_churn_rate,
                  "--key-churn: PROGRAM_KEY + EVICT_KEY pairs per second (default 0: back to back)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--json", b.json, "print the result as JSON");
  sub->add_flag("--quiet", b.quiet, "no progress on stderr");
}

namespace {

struct QueueRun {
  std::mutex mu;
  std::condition_variable cv;
  unsigned in_flight = 0;
  std::vector<uint32_t> lat_reads, lat_writes;  // microseconds x 10 (0.1 us units)
  uint64_t reads = 0, writes = 0;
  std::optional<Error> error;
};

double percentile(std::vector<uint32_t>& v, double p) {
  if (v.empty()) return 0;
  const size_t idx = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(idx), v.end());
  return v[idx] / 10.0;
}

// --key-churn: what one VM that keeps changing keys costs the others sharing the engine.
int run_key_churn(driver::Device& dev, const CryptOptions& copt, const BenchOptions& b,
                  double runtime) {
  auto die = [](const std::string& m) {
    std::fprintf(stderr, "iceblk bench: %s\n", m.c_str());
    return 1;
  };
  if (!dev.ice())
    return die("--key-churn: the device does not offer inline encryption (VIRTIO_BLK_F_ICE)");
  auto m = crypto_mode(copt);
  if (!m) return die(m.error().message);
  auto material = random_key(*m);
  if (!material) return die(material.error().message);
  auto key = ice::Key::create(*m, material->view());
  if (!key) return die(key.error().message);
  const auto t0 = Clock::now();
  const auto deadline =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(runtime));
  uint64_t pairs = 0;
  const auto period = b.key_churn_rate > 0
                          ? std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(1.0 / b.key_churn_rate))
                          : Clock::duration::zero();
  for (auto next = t0; Clock::now() < deadline; next += period) {
    if (period > Clock::duration::zero()) std::this_thread::sleep_until(next);
    if (auto st = dev.program_key(0, *key); !st) return die("PROGRAM_KEY: " + st.error().message);
    if (auto st = dev.evict_key(0); !st) return die("EVICT_KEY: " + st.error().message);
    ++pairs;
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  nlohmann::json j;
  j["mode"] = "key-churn";
  j["rate_limit"] = b.key_churn_rate;
  j["algorithm"] = ice::algorithm_name(m->alg, m->key_size);
  j["runtime_s"] = elapsed;
  j["program_evict_pairs"] = pairs;
  j["pairs_per_s"] = static_cast<double>(pairs) / elapsed;
  if (b.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("key churn: %llu PROGRAM_KEY + EVICT_KEY pairs in %.2f s (%.0f pairs/s)\n",
                static_cast<unsigned long long>(pairs), elapsed,
                static_cast<double>(pairs) / elapsed);
  }
  return 0;
}

}  // namespace

int run_bench(const DeviceOptions& dopt, const CryptOptions& copt, const BenchOptions& b) {
  auto die = [](const std::string& m) {
    std::fprintf(stderr, "iceblk bench: %s\n", m.c_str());
    return 1;
  };
  auto bs = parse_size(b.bs, "--bs");
  if (!bs) return die(bs.error().message);
  if (*bs == 0 || *bs % 512 != 0) return die("--bs must be a non-zero multiple of 512");
  std::optional<uint64_t> total;
  if (!b.size.empty()) {
    auto s = parse_size(b.size, "--size");
    if (!s) return die(s.error().message);
    total = *s;
  }
  const double runtime = b.runtime > 0 ? b.runtime : (total ? 0 : 5);
  DeviceOptions d = dopt;
  d.memory = std::max<uint64_t>(d.memory, uint64_t{d.queues} * b.iodepth * *bs * 2 + (16u << 20));
  d.queue_size = std::max<uint16_t>(d.queue_size, static_cast<uint16_t>(std::min<unsigned>(32768, b.iodepth * 4)));
  // Round the queue size up to a power of two.
  uint16_t qs = 1;
  while (qs < d.queue_size) qs = static_cast<uint16_t>(qs * 2);
  d.queue_size = qs;
  auto dev_r = open_device(d);
  if (!dev_r) return die(dev_r.error().message);
  driver::Device& dev = **dev_r;
  if (b.key_churn) return run_key_churn(dev, copt, b, runtime);
  const bool encrypt = b.encrypt == "on";
  std::optional<ice::CryptoMode> mode;
  if (encrypt) {
    auto m = crypto_mode(copt);
    if (!m) return die(m.error().message);
    if (!dev.ice()) return die("--encrypt on, but the device does not offer inline encryption (VIRTIO_BLK_F_ICE)");
    if (*bs % m->data_unit_size != 0) {
      return die(fmt::format("--bs {} is not a multiple of the {}-byte data unit", *bs, m->data_unit_size));
    }
    auto key = random_key(*m);
    if (!key) return die(key.error().message);
    if (auto st = install_key(dev, *m, *key, "bench"); !st) return die(st.error().message);
    mode = *m;
  }
  uint64_t span = dev.capacity_bytes();
  if (!b.span.empty()) {
    auto s = parse_size(b.span, "--span");
    if (!s) return die(s.error().message);
    span = std::min(span, *s);
  }
  const uint64_t blocks = span / *bs;
  if (blocks == 0) return die(fmt::format("the device ({} bytes) is smaller than --bs", span));
  const bool random = b.rw.rfind("rand", 0) == 0;
  const unsigned read_pct = b.rw == "read" || b.rw == "randread" ? 100 : b.rw == "randrw" ? b.rwmixread : 0;

  const uint16_t nq = dev.num_queues();
  std::vector<std::unique_ptr<QueueRun>> runs;
  for (uint16_t q = 0; q < nq; ++q) runs.push_back(std::make_unique<QueueRun>());
  std::atomic<uint64_t> bytes_done{0}, ios_issued_bytes{0};
  std::atomic<bool> stop{false};
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(runtime));

  auto worker = [&](uint16_t q) {
    QueueRun& r = *runs[q];
    std::mt19937_64 rng(b.seed * 7919 + q);
    std::vector<std::vector<uint8_t>> bufs(b.iodepth, std::vector<uint8_t>(*bs, static_cast<uint8_t>(q + 1)));
    std::vector<unsigned> free_bufs;
    for (unsigned i = 0; i < b.iodepth; ++i) free_bufs.push_back(i);
    uint64_t seq = (blocks / nq) * q;
    for (;;) {
      unsigned bi;
      {
        std::unique_lock lk(r.mu);
        r.cv.wait(lk, [&] { return !free_bufs.empty() || r.error; });
        if (r.error) break;
        bi = free_bufs.back();
        free_bufs.pop_back();
      }
      if (stop.load() || (runtime > 0 && Clock::now() >= deadline) ||
          (total && ios_issued_bytes.fetch_add(*bs) >= *total)) {
        stop.store(true);
        std::lock_guard lk(r.mu);
        free_bufs.push_back(bi);
        break;
      }
      const uint64_t block = random ? rng() % blocks : (seq++ % blocks);
      const bool is_read = read_pct == 100 || (read_pct != 0 && rng() % 100 < read_pct);
      driver::Io io;
      io.op = is_read ? driver::Op::kRead : driver::Op::kWrite;
      io.queue = q;
      io.offset = block * *bs;
      if (is_read) io.in = bufs[bi];
      else io.out = bufs[bi];
      if (mode) io.key = driver::KeyRef{"bench", io.offset / mode->data_unit_size};
      const auto start = Clock::now();
      {
        std::lock_guard lk(r.mu);
        ++r.in_flight;
      }
      Status st = dev.submit(std::move(io), [&r, &free_bufs, &bytes_done, bi, start, is_read, len = *bs](Status s) {
        const auto us10 = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count() / 100;
        std::lock_guard lk(r.mu);
        --r.in_flight;
        free_bufs.push_back(bi);
        if (!s) {
          if (!r.error) r.error = s.error();
        } else {
          (is_read ? r.lat_reads : r.lat_writes).push_back(static_cast<uint32_t>(std::min<int64_t>(us10, UINT32_MAX)));
          (is_read ? r.reads : r.writes)++;
          bytes_done.fetch_add(len, std::memory_order_relaxed);
        }
        r.cv.notify_all();
      });
      if (!st) {
        std::lock_guard lk(r.mu);
        --r.in_flight;
        free_bufs.push_back(bi);
        if (!r.error) r.error = st.error();
        break;
      }
    }
    std::unique_lock lk(r.mu);
    r.cv.wait(lk, [&] { return r.in_flight == 0; });
  };

  std::vector<std::thread> threads;
  for (uint16_t q = 0; q < nq; ++q) threads.emplace_back(worker, q);
  std::thread reporter([&] {
    uint64_t last_bytes = 0;
    auto last = Clock::now();
    while (!stop.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const auto now = Clock::now();
      if (now - last < std::chrono::seconds(1)) continue;
      const uint64_t bd = bytes_done.load();
      const double secs = std::chrono::duration<double>(now - last).count();
      if (!b.quiet) {
        progress(fmt::format("bench: {:.0f}s  {:.1f} MB/s  {:.0f} IOPS",
                             std::chrono::duration<double>(now - t0).count(),
                             static_cast<double>(bd - last_bytes) / secs / 1e6,
                             static_cast<double>(bd - last_bytes) / static_cast<double>(*bs) / secs));
      }
      last = now;
      last_bytes = bd;
    }
  });
  for (auto& t : threads) t.join();
  stop.store(true);
  reporter.join();
  if (!b.quiet && std::chrono::duration<double>(Clock::now() - t0).count() >= 1) progress_done();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();

  std::vector<uint32_t> lr, lw;
  uint64_t reads = 0, writes = 0;
  for (auto& r : runs) {
    if (r->error) return die(r->error->message);
    lr.insert(lr.end(), r->lat_reads.begin(), r->lat_reads.end());
    lw.insert(lw.end(), r->lat_writes.begin(), r->lat_writes.end());
    reads += r->reads;
    writes += r->writes;
  }
  std::vector<uint32_t> all = lr;
  all.insert(all.end(), lw.begin(), lw.end());
  const uint64_t ios = reads + writes;
  const double iops = static_cast<double>(ios) / elapsed;
  const double mbs = static_cast<double>(ios * *bs) / elapsed / 1e6;
  double mean = 0;
  for (auto v : all) mean += v / 10.0;
  if (!all.empty()) mean /= static_cast<double>(all.size());
  const double p50 = percentile(all, 50), p99 = percentile(all, 99), p999 = percentile(all, 99.9);

  nlohmann::json j;
  j["rw"] = b.rw;
  j["bs"] = *bs;
  j["iodepth"] = b.iodepth;
  j["queues"] = nq;
  j["encrypt"] = encrypt;
  if (mode) {
    j["algorithm"] = ice::algorithm_name(mode->alg, mode->key_size);
    j["data_unit_size"] = mode->data_unit_size;
  }
  j["completion"] = dopt.poll ? "poll" : "interrupt";
  j["runtime_s"] = elapsed;
  j["ios"] = ios;
  j["reads"] = reads;
  j["writes"] = writes;
  j["iops"] = iops;
  j["mb_per_s"] = mbs;
  j["lat_us"] = {{"mean", mean}, {"p50", p50}, {"p99", p99}, {"p99_9", p999}};
  if (!lr.empty()) j["read_lat_us"] = {{"p50", percentile(lr, 50)}, {"p99", percentile(lr, 99)}};
  if (!lw.empty()) j["write_lat_us"] = {{"p50", percentile(lw, 50)}, {"p99", percentile(lw, 99)}};
  if (b.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("%s bs=%llu iodepth=%u queues=%u encrypt=%s%s completion=%s\n", b.rw.c_str(),
              static_cast<unsigned long long>(*bs), b.iodepth, nq, encrypt ? "on" : "off",
              mode ? fmt::format(" ({}, {}-byte data units)", ice::algorithm_name(mode->alg, mode->key_size),
                                 mode->data_unit_size)
                         .c_str()
                   : "",
              dopt.poll ? "poll" : "interrupt");
  std::printf("  ios: %llu (%llu reads, %llu writes) in %.2f s\n", static_cast<unsigned long long>(ios),
              static_cast<unsigned long long>(reads), static_cast<unsigned long long>(writes), elapsed);
  std::printf("  IOPS: %.0f   bandwidth: %.1f MB/s\n", iops, mbs);
  std::printf("  latency (us): mean %.1f  p50 %.1f  p99 %.1f  p99.9 %.1f\n", mean, p50, p99, p999);
  return 0;
}

}  // namespace iceblk::cli
