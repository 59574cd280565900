// iceblk: userspace virtio-blk (+ ICE) driver command line. See `iceblk --help`
// and README.md ("Driver library and CLI").
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "base/log.h"
#include "base/version.h"
#include "bench.h"
#include "common.h"
#include "ctl.h"
#include "ice/key_file.h"
#include "iceblk/conformance.h"
#include "iceblk/keyslot_manager.h"

using namespace iceblk;
using namespace iceblk::cli;

namespace {

constexpr uint64_t kChunk = 1 << 20;

int die(const Error& e) {
  std::fprintf(stderr, "iceblk: %s\n", e.message.c_str());
  return 1;
}
int die(const std::string& msg) {
  std::fprintf(stderr, "iceblk: %s\n", msg.c_str());
  return 1;
}

void add_device_options(CLI::App* sub, DeviceOptions& o, bool queues = false) {
  sub->add_option("--socket,-s", o.socket, "vhost-user-blk socket of the device")->required();
  if (queues) sub->add_option("--queues", o.queues, "virtqueues to use")->check(CLI::Range(1, 64));
  sub->add_option("--queue-size", o.queue_size, "virtqueue size (power of two)")->check(CLI::Range(2, 32768));
  sub->add_flag("--plain", o.plain, "do not negotiate VIRTIO_BLK_F_ICE (plain virtio-blk)");
  sub->add_flag("--poll", o.poll, "poll the used rings instead of waiting for interrupts");
  sub->add_option("--secure-world", o.secure_world,
                  "out-of-band key channel (default: <socket>.sw when it exists)");
}

void add_crypt_options(CLI::App* sub, CryptOptions& c, bool key_file = true) {
  if (key_file) sub->add_option("--key-file,-k", c.key_file, "key file (raw bytes or hex): encrypt inline");
  sub->add_option("--algorithm,-a", c.algorithm, "aes-256-xts, aes-128-xts, aes-128-cbc-essiv, aes-256-ecb ...");
  sub->add_option("--data-unit-size", c.data_unit_size, "data unit size in bytes (512..65536)");
}

struct IoArgs {
  std::string offset = "0", length, file, pattern, dun;
  uint16_t queue = 0;
};

// Sets up the key when --key-file was given; returns the KeyRef base.
Result<std::optional<ice::CryptoMode>> setup_crypt(driver::Device& dev, const CryptOptions& c) {
  if (c.key_file.empty()) return std::optional<ice::CryptoMode>{};
  ICEBLK_ASSIGN_OR_RETURN(auto mode, crypto_mode(c));
  if (!dev.ice()) {
    return fail(Errc::kUnsupported,
                "--key-file given, but the device does not offer inline encryption (VIRTIO_BLK_F_ICE)");
  }
  ICEBLK_ASSIGN_OR_RETURN(auto key, ice::load_key_file(c.key_file, mode));
  ICEBLK_TRY(install_key(dev, mode, key));
  return std::optional<ice::CryptoMode>(mode);
}

Result<uint64_t> pick_dun(const IoArgs& a, uint64_t offset, uint32_t dus) {
  if (!a.dun.empty()) {
    try {
      return std::stoull(a.dun, nullptr, 0);
    } catch (...) {
      return fail(Errc::kInvalidArgument, "--dun '{}' is not a number", a.dun);
    }
  }
  if (offset % dus != 0) {
    return fail(Errc::kMisaligned, "offset {} is not a multiple of the {}-byte data unit", offset, dus);
  }
  return offset / dus;
}

// One chunked transfer, with progress on long runs.
Status transfer(driver::Device& dev, bool write, uint64_t offset, std::span<uint8_t> buf,
                const std::optional<ice::CryptoMode>& mode, uint64_t dun, uint16_t q) {
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  for (uint64_t done = 0; done < buf.size();) {
    const uint64_t n = std::min<uint64_t>(kChunk, buf.size() - done);
    auto piece = buf.subspan(done, n);
    Status st;
    if (mode) {
      driver::KeyRef k{"cli", dun + done / mode->data_unit_size};
      st = write ? dev.write(offset + done, piece, k, q) : dev.read(offset + done, piece, k, q);
    } else {
      st = write ? dev.write(offset + done, piece, q) : dev.read(offset + done, piece, q);
    }
    ICEBLK_TRY(st);
    done += n;
    const auto now = std::chrono::steady_clock::now();
    if (now - last > std::chrono::seconds(1)) {
      last = now;
      progress(fmt::format("{} {} / {} MiB", write ? "written" : "read", done >> 20, buf.size() >> 20));
    }
  }
  if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(1)) progress_done();
  return {};
}

void hexdump(std::span<const uint8_t> b, uint64_t base) {
  for (size_t i = 0; i < b.size(); i += 16) {
    std::printf("%08llx ", static_cast<unsigned long long>(base + i));
    for (size_t j = i; j < i + 16 && j < b.size(); ++j) std::printf(" %02x", b[j]);
    std::printf("\n");
  }
}

int cmd_info(const DeviceOptions& o, bool json) {
  auto d = open_device(o);
  if (!d) return die(d.error());
  driver::Device& dev = **d;
  const auto& c = dev.config();
  auto serial = dev.get_id();
  nlohmann::json j;
  j["socket"] = o.socket;
  j["features_offered"] = dev.offered_features();
  j["features_negotiated"] = dev.negotiated_features();
  j["protocol_features"] = dev.protocol_features();
  j["queues"] = dev.num_queues();
  j["header_size"] = dev.header_size();
  j["capacity_sectors"] = c.capacity_sectors;
  j["size_max"] = c.size_max;
  j["seg_max"] = c.seg_max;
  j["blk_size"] = c.blk_size;
  j["physical_block_exp"] = c.physical_block_exp;
  j["min_io_size"] = c.min_io_size;
  j["opt_io_size"] = c.opt_io_size;
  j["writeback"] = c.writeback;
  j["num_queues"] = c.num_queues;
  j["max_discard_sectors"] = c.max_discard_sectors;
  j["max_discard_seg"] = c.max_discard_seg;
  j["discard_sector_alignment"] = c.discard_sector_alignment;
  j["max_write_zeroes_sectors"] = c.max_write_zeroes_sectors;
  j["max_write_zeroes_seg"] = c.max_write_zeroes_seg;
  j["write_zeroes_may_unmap"] = c.write_zeroes_may_unmap;
  j["config_bytes"] = c.raw.size();
  j["serial"] = serial ? *serial : std::string();
  j["ice"] = dev.ice();
  j["ice_offered"] = dev.ice_offered();
  j["key_mode"] = driver::key_mode_name(dev.key_mode());
  j["max_slots"] = c.max_slots;
  j["slot_offset"] = c.slot_offset;
  j["capability_num"] = c.capability_num;
  nlohmann::json caps = nlohmann::json::array();
  for (const auto& cap : dev.capabilities()) {
    caps.push_back({{"algorithm", ice::algorithm_name(cap.alg, cap.key_size)},
                    {"alg", static_cast<int>(cap.alg)},
                    {"key_size", static_cast<int>(cap.key_size)},
                    {"data_unit_size", ice::kMinDataUnitSize << cap.data_unit_size_exp}});
  }
  j["capabilities"] = caps;
  if (json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("device:              %s\n", o.socket.c_str());
  std::printf("features offered:    %#llx  %s\n", static_cast<unsigned long long>(dev.offered_features()),
              driver::feature_names(dev.offered_features()).c_str());
  std::printf("features negotiated: %#llx  %s\n", static_cast<unsigned long long>(dev.negotiated_features()),
              driver::feature_names(dev.negotiated_features()).c_str());
  std::printf("protocol features:   %#llx\n", static_cast<unsigned long long>(dev.protocol_features()));
  std::printf("queues:              %u in use (config num_queues %u), size %u, header %u bytes\n", dev.num_queues(),
              c.num_queues, dev.queue_size(), dev.header_size());
  std::printf("capacity:            %llu sectors (%llu bytes)\n", static_cast<unsigned long long>(c.capacity_sectors),
              static_cast<unsigned long long>(dev.capacity_bytes()));
  std::printf("serial:              %s\n", serial ? serial->c_str() : ("(" + serial.error().message + ")").c_str());
  std::printf("blk_size %u, size_max %u, seg_max %u, physical_block_exp %u, min_io %u, opt_io %u, writeback %u\n",
              c.blk_size, c.size_max, c.seg_max, c.physical_block_exp, c.min_io_size, c.opt_io_size, c.writeback);
  std::printf("discard: max %u sectors, %u segs, alignment %u; write-zeroes: max %u sectors, %u segs, may_unmap %u\n",
              c.max_discard_sectors, c.max_discard_seg, c.discard_sector_alignment, c.max_write_zeroes_sectors,
              c.max_write_zeroes_seg, c.write_zeroes_may_unmap);
  if (!dev.ice_offered()) {
    std::printf("inline encryption:   absent (VIRTIO_BLK_F_ICE not offered)\n");
    return 0;
  }
  std::printf("inline encryption:   %s, keys %s, max_slots %u, slot_offset %u, %u capabilities\n",
              dev.ice() ? "negotiated" : "offered, not negotiated (--plain)", driver::key_mode_name(dev.key_mode()),
              c.max_slots, c.slot_offset, c.capability_num);
  for (const auto& cap : dev.capabilities()) {
    std::printf("  %-18s data unit %5u  (alg %d, key size id %d)\n", ice::algorithm_name(cap.alg, cap.key_size).c_str(),
                ice::kMinDataUnitSize << cap.data_unit_size_exp, static_cast<int>(cap.alg),
                static_cast<int>(cap.key_size));
  }
  return 0;
}

int cmd_rw(bool write, const DeviceOptions& o, const CryptOptions& c, const IoArgs& a) {
  auto offset = parse_size(a.offset, "--offset");
  if (!offset) return die(offset.error());
  std::vector<uint8_t> buf;
  std::optional<uint64_t> length;
  if (!a.length.empty()) {
    auto l = parse_size(a.length, "--length");
    if (!l) return die(l.error());
    length = *l;
  }
  if (write) {
    if (a.file.empty() == a.pattern.empty()) return die("write needs exactly one of --file or --pattern");
    if (!a.file.empty()) {
      std::ifstream f(a.file, std::ios::binary);
      if (!f) return die(fmt::format("cannot open {}", a.file));
      buf.assign(std::istreambuf_iterator<char>(f), {});
      if (length) buf.resize(*length, 0);
    } else {
      if (!length) return die("--pattern needs --length");
      buf.resize(*length);
      if (a.pattern.rfind("seed:", 0) == 0) {
        fill_pattern(std::stoull(a.pattern.substr(5), nullptr, 0), *offset, buf);
      } else {
        unsigned long v = 0;
        try {
          v = std::stoul(a.pattern, nullptr, 0);
        } catch (...) {
          return die(fmt::format("--pattern '{}': use a byte value (0xab) or seed:N", a.pattern));
        }
        if (v > 255) return die(fmt::format("--pattern '{}': a byte value is 0..255", a.pattern));
        std::fill(buf.begin(), buf.end(), static_cast<uint8_t>(v));
      }
    }
  } else {
    if (!length) return die("read needs --length");
    buf.resize(*length);
  }
  if (buf.empty()) return die("nothing to transfer (length 0)");
  auto d = open_device(o);
  if (!d) return die(d.error());
  auto mode = setup_crypt(**d, c);
  if (!mode) return die(mode.error());
  uint64_t dun = 0;
  if (*mode) {
    auto du = pick_dun(a, *offset, (*mode)->data_unit_size);
    if (!du) return die(du.error());
    dun = *du;
  }
  if (auto st = transfer(**d, write, *offset, buf, *mode, dun, a.queue); !st) return die(st.error());
  if (write) {
    std::fprintf(stderr, "wrote %zu bytes at offset %llu%s\n", buf.size(), static_cast<unsigned long long>(*offset),
                 *mode ? fmt::format(" (encrypted, first DUN {})", dun).c_str() : "");
    return 0;
  }
  if (!a.file.empty()) {
    std::ofstream f(a.file, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    if (!f) return die(fmt::format("cannot write {}", a.file));
  } else if (!a.pattern.empty()) {
    std::vector<uint8_t> want(buf.size());
    if (a.pattern.rfind("seed:", 0) == 0) {
      fill_pattern(std::stoull(a.pattern.substr(5), nullptr, 0), *offset, want);
    } else {
      std::fill(want.begin(), want.end(), static_cast<uint8_t>(std::stoul(a.pattern, nullptr, 0)));
    }
    for (size_t i = 0; i < buf.size(); ++i) {
      if (buf[i] != want[i]) {
        return die(fmt::format("pattern mismatch at offset {}: read {:#04x}, expected {:#04x}", *offset + i, buf[i],
                               want[i]));
      }
    }
    std::printf("pattern matches (%zu bytes)\n", buf.size());
  } else {
    hexdump(buf, *offset);
  }
  return 0;
}

int cmd_verify(const DeviceOptions& o, const CryptOptions& c, const IoArgs& a, uint64_t seed) {
  auto offset = parse_size(a.offset, "--offset");
  auto length = parse_size(a.length.empty() ? "1M" : a.length, "--length");
  if (!offset) return die(offset.error());
  if (!length) return die(length.error());
  auto mode = crypto_mode(c);
  if (!mode) return die(mode.error());
  auto d = open_device(o);
  if (!d) return die(d.error());
  driver::Device& dev = **d;
  if (!dev.ice()) return die("verify needs inline encryption, and the device does not offer VIRTIO_BLK_F_ICE");
  auto key = c.key_file.empty() ? random_key(*mode) : ice::load_key_file(c.key_file, *mode);
  if (!key) return die(key.error());
  if (auto st = install_key(dev, *mode, *key); !st) return die(st.error());
  auto dun = pick_dun(a, *offset, mode->data_unit_size);
  if (!dun) return die(dun.error());
  std::vector<uint8_t> plain(*length), back(*length), raw(*length);
  fill_pattern(seed, *offset, plain);
  auto step = [&](const char* name, Status st) {
    std::printf("%-44s %s\n", name, st ? "ok" : ("FAILED: " + st.error().message).c_str());
    return static_cast<bool>(st);
  };
  bool ok = step("write seeded pattern, encrypted", transfer(dev, true, *offset, plain, *mode, *dun, a.queue));
  ok = ok && step("read back, decrypted", transfer(dev, false, *offset, back, *mode, *dun, a.queue));
  if (ok) {
    Status cmp;
    if (back != plain) cmp = fail(Errc::kIo, "decrypted data differs from what was written");
    ok = step("decrypted data equals the pattern", cmp);
  }
  ok = ok && step("read back raw (encryption off)", transfer(dev, false, *offset, raw, std::nullopt, 0, a.queue));
  if (ok) {
    // The medium must not hold the plaintext: no data unit may equal it.
    Status st;
    for (uint64_t off = 0; off < raw.size(); off += mode->data_unit_size) {
      const uint64_t n = std::min<uint64_t>(mode->data_unit_size, raw.size() - off);
      if (std::equal(raw.begin() + static_cast<long>(off), raw.begin() + static_cast<long>(off + n),
                     plain.begin() + static_cast<long>(off))) {
        st = fail(Errc::kIo, "data unit at offset {} is stored in plaintext", *offset + off);
        break;
      }
    }
    ok = step("medium holds no plaintext data unit", st);
  }
  std::printf("verify %s: %llu bytes at offset %llu, %s, data unit %u, first DUN %llu, keys %s\n",
              ok ? "PASSED" : "FAILED", static_cast<unsigned long long>(*length),
              static_cast<unsigned long long>(*offset), ice::algorithm_name(mode->alg, mode->key_size).c_str(),
              mode->data_unit_size, static_cast<unsigned long long>(*dun), driver::key_mode_name(dev.key_mode()));
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "iceblk: userspace virtio-blk driver for vhost-user-blk devices, with inline encryption "
      "(VIRTIO_BLK_F_ICE).\n\n"
      "Examples:\n"
      "  iceblk info --socket /tmp/vm0.sock\n"
      "  iceblk write -s /tmp/vm0.sock --offset 0 --length 1M --pattern seed:7 --key-file k.bin\n"
      "  iceblk read -s /tmp/vm0.sock --offset 0 --length 1M --pattern seed:7 --key-file k.bin\n"
      "  iceblk verify -s /tmp/vm0.sock --length 4M --algorithm aes-128-xts\n"
      "  iceblk bench -s /tmp/vm0.sock --rw randread --bs 4k --iodepth 32 --runtime 10 --encrypt on\n"
      "  iceblk conformance --socket /tmp/vm0.sock\n"
      "  iceblk ctl -c /run/iceblkd.qmp query-exports\n"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] { return version::banner("iceblk"); },
                       "print the version, the git revision and the library versions, and exit");
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");

  DeviceOptions dopt;
  CryptOptions copt;
  IoArgs io;
  bool json = false;
  uint64_t seed = 1;

  auto* info = app.add_subcommand("info", "show features, config space, keyslots and crypto capabilities");
  add_device_options(info, dopt);
  info->add_flag("--json", json, "machine-readable output");

  auto* rd = app.add_subcommand("read", "read a range (hex dump, --file, or check against --pattern)");
  auto* wr = app.add_subcommand("write", "write a range from --file or a --pattern");
  for (auto* sub : {rd, wr}) {
    add_device_options(sub, dopt);
    add_crypt_options(sub, copt);
    sub->add_option("--offset,-o", io.offset, "byte offset (multiple of 512; K/M/G suffixes)");
    sub->add_option("--length,-l", io.length, "bytes (multiple of 512)");
    sub->add_option("--file,-f", io.file, sub == rd ? "write the data to this file" : "data to write");
    sub->add_option("--pattern,-p", io.pattern, "byte value (0xab) or seed:N (deterministic per offset)");
    sub->add_option("--dun", io.dun, "DUN of the first data unit (default: offset / data-unit-size)");
    sub->add_option("--queue", io.queue, "queue index");
  }

  auto* vf = app.add_subcommand(
      "verify", "write a seeded pattern encrypted, read it back, and check the medium holds no plaintext");
  add_device_options(vf, dopt);
  add_crypt_options(vf, copt);
  vf->add_option("--offset,-o", io.offset, "byte offset");
  vf->add_option("--length,-l", io.length, "bytes (default 1M)");
  vf->add_option("--dun", io.dun, "DUN of the first data unit (default: offset / data-unit-size)");
  vf->add_option("--seed", seed, "pattern seed");

  BenchOptions bopt;
  auto* bn = app.add_subcommand("bench", "fio-like benchmark: IOPS, MB/s, latency percentiles");
  add_device_options(bn, dopt, /*queues=*/true);
  add_crypt_options(bn, copt, /*key_file=*/false);
  add_bench_options(bn, bopt);

  driver::ConformanceOptions conf;
  auto* cf = app.add_subcommand("conformance", "run the virtio-blk + ICE conformance checks against a device");
  cf->add_option("--socket,-s", conf.socket_path, "vhost-user-blk socket of the device")->required();
  cf->add_option("--secure-world", conf.secure_world_socket,
                 "out-of-band key channel (default: <socket>.sw when it exists)");
  cf->add_flag("--verbose,-v", conf.verbose, "print details for passing checks too");

  CtlOptions ctl_opt;
  auto* ctl = add_ctl_command(app, ctl_opt);

  CLI11_PARSE(app, argc, argv);
  log::set_level(log_level);

  if (ctl->parsed()) return run_ctl(ctl_opt);
  if (info->parsed()) return cmd_info(dopt, json);
  if (rd->parsed()) return cmd_rw(false, dopt, copt, io);
  if (wr->parsed()) return cmd_rw(true, dopt, copt, io);
  if (vf->parsed()) return cmd_verify(dopt, copt, io, seed);
  if (bn->parsed()) return run_bench(dopt, copt, bopt);
  if (cf->parsed()) {
    struct stat st {};
    if (::stat(conf.socket_path.c_str(), &st) != 0) {
      return die(fmt::format("no device socket at {} (is the device daemon running?)", conf.socket_path));
    }
    if (conf.secure_world_socket.empty()) {
      const std::string def = conf.socket_path + ".sw";
      if (::stat(def.c_str(), &st) == 0) conf.secure_world_socket = def;
    }
    auto report = driver::run_conformance(conf, [](const driver::CheckResult& r) {
      std::printf("%s\n", driver::format_check(r).c_str());
      std::fflush(stdout);
    });
    if (!report) return die(report.error());
    std::printf("conformance: %zu passed, %zu failed, %zu skipped\n", report->passed, report->failed,
                report->skipped);
    return report->failed == 0 ? 0 : 1;
  }
  return 1;
}
