// `iceblk bench`: fio-like load through the driver library.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "common.h"

namespace iceblk::cli {

struct BenchOptions {
  std::string rw = "randread";  // read | write | randread | randwrite | randrw
  std::string bs = "4K";
  unsigned iodepth = 16;        // per queue
  double runtime = 0;           // seconds (default 5 unless --size)
  std::string size;             // total bytes to transfer (instead of --runtime)
  std::string span;             // bytes of the device to use (default: all)
  std::string encrypt = "off";  // on | off
  unsigned rwmixread = 50;      // randrw: percentage of reads
  uint64_t seed = 1;
  bool key_churn = false;  // program and evict a key in a loop instead of I/O
  double key_churn_rate = 0;  // --key-churn pairs per second (0: as fast as the device answers)
  bool json = false;
  bool quiet = false;
};

void add_bench_options(CLI::App* sub, BenchOptions& b);
int run_bench(const DeviceOptions& d, const CryptOptions& c, const BenchOptions& b);

}  // namespace iceblk::cli
