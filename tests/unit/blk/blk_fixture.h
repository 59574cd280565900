// In-process harness for the blk device: a driver-side ring (support/ring_harness.h)
// feeding a BlkDevice's QueueProcessor, plus helpers to build requests in any
// descriptor layout and to inspect the medium directly (not through the device).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backend/block_backend.h"
#include "base/le.h"
#include "blk/device.h"
#include "blk/queue_processor.h"
#include "blk/wire.h"
#include "ice/engine.h"
#include "support/ring_harness.h"
#include "support/backend_kind.h"
#include "support/temp_dir.h"

namespace iceblk::blk::testing {

using iceblk::test::BackendKind;
using iceblk::test::backend_name;

// One piece of a descriptor chain: readable bytes, or a writable buffer of `len`.
struct Piece {
  bool writable = false;
  std::vector<uint8_t> bytes;  // readable content
  uint32_t len = 0;            // writable length
  static Piece out(std::vector<uint8_t> b) { return {false, std::move(b), 0}; }
  static Piece in(uint32_t n) { return {true, {}, n}; }
};

struct Completion {
  bool completed = false;
  uint32_t used_len = 0;
  int status = -1;                           // last byte of the last writable piece
  std::vector<std::vector<uint8_t>> in_bufs;  // contents of every writable piece afterwards
  std::vector<std::vector<uint8_t>> out_bufs;  // contents of readable pieces afterwards
  // All writable bytes but the status byte, concatenated.
  [[nodiscard]] std::vector<uint8_t> in_data() const {
    std::vector<uint8_t> v;
    for (const auto& b : in_bufs) v.insert(v.end(), b.begin(), b.end());
    if (!v.empty()) v.pop_back();
    return v;
  }
};

inline std::vector<uint8_t> random_bytes(size_t n, unsigned seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

template <typename T>
std::vector<uint8_t> as_bytes(const T& t) {
  std::vector<uint8_t> v(sizeof t);
  std::memcpy(v.data(), &t, sizeof t);
  return v;
}

inline std::vector<uint8_t> concat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct DeviceSetup {
  BackendKind backend = BackendKind::kMemory;
  bool ice = false;
  KeyMode key_mode = KeyMode::kInBand;
  bool read_only = false;
  uint64_t size = 2 << 20;
  uint16_t ring_size = 64;
  bool event_idx = true;
  bool indirect = true;
  uint64_t driver_mem = 8 << 20;
  ice::SlotRange range{8, 4};
  uint64_t max_buffer_memory = kDefaultExportBufferMemory;
  std::shared_ptr<BufferBudget> buffer_budget;
  unsigned crypt_threads = 0;  // > 0: a crypto thread pool (ice/crypt_pool.h)
};

class BlkHarness {
 public:
  explicit BlkHarness(DeviceSetup s) : s_(s) {}
  ~BlkHarness() {
    proc_.reset();
    dev_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Builds backend, engine, device; negotiates `features` (default: all offered).
  void init(std::optional<uint64_t> features = std::nullopt) {
    if (s_.backend == BackendKind::kMemory) {
      auto b = backend::make_memory_backend(s_.size, s_.read_only);
      ASSERT_TRUE(b) << b.error().to_string();
      backend_ = std::move(*b);
    } else {
      dir_ = iceblk::test::make_temp_dir("iceblk-blk");
      path_ = dir_ + "/disk.img";
      backend::FileOptions o;
      o.path = path_;
      o.create = true;
      o.size = s_.size;
      o.engine = s_.backend == BackendKind::kFileSync ? backend::FileEngine::kSync : backend::FileEngine::kIoUring;
      auto b = backend::open_file_backend(o);
      ASSERT_TRUE(b) << b.error().to_string();
      if (s_.read_only) {
        b->reset();
        o.create = false;
        o.size = 0;
        o.read_only = true;
        b = backend::open_file_backend(o);
        ASSERT_TRUE(b) << b.error().to_string();
      }
      backend_ = std::move(*b);
    }
    BlkDeviceConfig cfg;
    cfg.queue_size = s_.ring_size;
    cfg.serial = "iceblk-serial-01";
    cfg.max_discard_sectors = 64;
    cfg.max_discard_seg = 4;
    cfg.max_write_zeroes_sectors = 64;
    cfg.max_write_zeroes_seg = 4;
    cfg.max_buffer_memory = s_.max_buffer_memory;
    cfg.buffer_budget = s_.buffer_budget;
    if (s_.ice) {
      auto e = ice::Engine::create({});
      ASSERT_TRUE(e) << e.error().to_string();
      engine_ = std::shared_ptr<ice::Engine>(std::move(*e));
      // A neighbour VM below ours, so range checks have something to protect.
      ASSERT_TRUE(engine_->add_vm("other", {0, 8}));
      auto vm = engine_->add_vm("vm", s_.range);
      ASSERT_TRUE(vm) << vm.error().to_string();
      cfg.engine = engine_;
      cfg.vm = *vm;
      cfg.key_mode = s_.key_mode;
      if (s_.crypt_threads > 0) {
        auto p = ice::CryptPool::create({s_.crypt_threads});
        ASSERT_TRUE(p) << p.error().to_string();
        cfg.crypt_pool = std::move(*p);
      }
    }
    auto d = BlkDevice::create(cfg, backend_);
    ASSERT_TRUE(d) << d.error().to_string();
    dev_ = std::move(*d);
    negotiate(features.value_or(dev_->offered_features()));
  }

  void negotiate(uint64_t features) {
    proc_.reset();
    ASSERT_TRUE(dev_->set_features(features));
    test::RingOptions ro;
    ro.size = s_.ring_size;
    ro.event_idx = s_.event_idx && has_feature(features, kFeatureEventIdx);
    ro.indirect = s_.indirect && has_feature(features, kFeatureIndirectDesc);
    ro.mem_size = s_.driver_mem;
    auto h = test::RingHarness::create(ro);
    ASSERT_TRUE(h) << h.error().to_string();
    ring_ = std::move(*h);
    auto p = dev_->make_queue_processor(0);
    ASSERT_TRUE(p) << p.error().to_string();
    proc_ = std::move(*p);
    if (ro.event_idx) ring_->driver().enable_interrupts();
  }

  [[nodiscard]] bool ice_negotiated() const { return has_feature(dev_->negotiated_features(), kFeatureIce); }

  // Request header in the negotiated format (16 or 32 bytes).
  std::vector<uint8_t> header(uint32_t type, uint64_t sector, uint8_t slot = 0, uint8_t activate = 0,
                              uint64_t dun = 0, uint16_t res1 = 0, uint32_t res2 = 0) const {
    return encode_header(dev_->header_size(), type, sector, slot, activate, dun, res1, res2);
  }

  // Place the chain, run the processor until it completes (or gives up).
  Completion run(const std::vector<Piece>& pieces, bool use_indirect = false) {
    auto c = start(pieces, use_indirect);
    return wait(c);
  }

  struct Pending {
    uint16_t head = 0;
    std::vector<std::pair<GuestAddr, Piece>> bufs;
  };

  Pending start(const std::vector<Piece>& pieces, bool use_indirect = false) {
    Pending p;
    std::vector<virtio::Buffer> bufs;
    for (const auto& pc : pieces) {
      Result<GuestAddr> a = pc.writable ? ring_->alloc(pc.len == 0 ? 1 : pc.len, 0xA5, 8)
                                        : ring_->alloc_bytes(pc.bytes, 8);
      EXPECT_TRUE(a);
      if (!a) return p;
      bufs.push_back({*a, pc.writable ? pc.len : static_cast<uint32_t>(pc.bytes.size()), pc.writable});
      p.bufs.emplace_back(*a, pc);
    }
    auto h = ring_->driver().add(bufs, use_indirect);
    EXPECT_TRUE(h) << h.error().to_string();
    p.head = h ? *h : 0;
    ring_->driver().publish();
    return p;
  }

  Completion wait(Pending& p) {
    Completion c;
    for (int i = 0; i < 2000 && !c.completed; ++i) {
      auto r = proc_->process(ring_->device());
      EXPECT_TRUE(r) << r.error().to_string();
      if (r && *r) ++notifications_;
      collect();
      if (auto it = used_.find(p.head); it != used_.end()) {
        c.completed = true;
        c.used_len = it->second;
        used_.erase(it);
        break;
      }
      if (const int fd = proc_->completion_fd(); fd >= 0) {
        pollfd pf{fd, POLLIN, 0};
        ::poll(&pf, 1, 10);
      }
    }
    EXPECT_TRUE(c.completed) << "request never completed";
    for (auto& [a, pc] : p.bufs) {
      const uint64_t len = pc.writable ? pc.len : pc.bytes.size();
      auto sp = ring_->bytes(a, len);
      if (pc.writable) {
        c.in_bufs.emplace_back(sp.begin(), sp.end());
        if (!sp.empty()) c.status = sp.back();
      } else {
        c.out_bufs.emplace_back(sp.begin(), sp.end());
      }
      ring_->mem().free(a);
    }
    return c;
  }

  void collect() {
    while (auto u = ring_->driver().get_used()) used_[u->head] = u->len;
  }

  // [hdr][out data][in data][status] in separate descriptors.
  Completion simple(std::vector<uint8_t> hdr, const std::vector<uint8_t>& out, uint32_t in_len) {
    std::vector<Piece> p{Piece::out(std::move(hdr))};
    if (!out.empty()) p.push_back(Piece::out(out));
    if (in_len > 0) p.push_back(Piece::in(in_len));
    p.push_back(Piece::in(1));
    return run(p);
  }

  Completion write(uint64_t sector, const std::vector<uint8_t>& data, uint8_t slot = 0, uint8_t activate = 0,
                   uint64_t dun = 0) {
    return simple(header(kTypeOut, sector, slot, activate, dun), data, 0);
  }
  Completion read(uint64_t sector, uint32_t len, uint8_t slot = 0, uint8_t activate = 0, uint64_t dun = 0) {
    return simple(header(kTypeIn, sector, slot, activate, dun), {}, len);
  }

  // The medium's bytes, read directly (memory backend bytes, or the image file).
  std::vector<uint8_t> medium() {
    if (s_.backend == BackendKind::kMemory) {
      auto b = backend::memory_backend_bytes(*backend_);
      return {b.begin(), b.end()};
    }
    std::vector<uint8_t> v(s_.size);
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, v.data(), v.size(), 0), static_cast<ssize_t>(v.size()));
    ::close(fd);
    return v;
  }

  void fill_medium(unsigned seed) {
    auto data = random_bytes(s_.size, seed);
    for (uint64_t off = 0; off < s_.size; off += 256 * 1024) {
      std::vector<uint8_t> chunk(data.begin() + off, data.begin() + off + 256 * 1024);
      auto c = simple(header(kTypeOut, off / 512), chunk, 0);
      ASSERT_EQ(c.status, kStatusOk);
    }
  }

  DeviceSetup s_;
  std::string dir_, path_;
  std::shared_ptr<backend::BlockBackend> backend_;
  std::shared_ptr<ice::Engine> engine_;
  std::unique_ptr<BlkDevice> dev_;
  std::unique_ptr<test::RingHarness> ring_;
  std::unique_ptr<QueueProcessor> proc_;
  std::map<uint16_t, uint32_t> used_;
  unsigned notifications_ = 0;
};

}  // namespace iceblk::blk::testing
