// The driver library (include/iceblk/device.h): vhost-user front-end + driver-side
// split rings in memfd memory + request tracking + keyslot manager.
#include "iceblk/device.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "base/checked.h"
#include "base/le.h"
#include "base/secret_bytes.h"
#include "base/unique_fd.h"
#include "blk/wire.h"
#include "driver/driver_queue.h"
#include "driver/keyslot_manager.h"
#include "driver/secure_world_client.h"
#include "driver/vhost_user_frontend.h"
#include "ice/key_blob.h"

namespace iceblk::driver {

namespace {

using blk::feature_bit;

// Device feature bits this driver understands (and accepts when offered).
constexpr uint64_t kKnownFeatures =
    feature_bit(VIRTIO_BLK_F_SIZE_MAX) | feature_bit(blk::kFeatureSegMax) | feature_bit(VIRTIO_BLK_F_GEOMETRY) |
    feature_bit(blk::kFeatureRo) | feature_bit(blk::kFeatureBlkSize) | feature_bit(blk::kFeatureFlush) |
    feature_bit(blk::kFeatureTopology) | feature_bit(blk::kFeatureConfigWce) | feature_bit(blk::kFeatureMq) |
    feature_bit(blk::kFeatureDiscard) | feature_bit(blk::kFeatureWriteZeroes) | feature_bit(blk::kFeatureVersion1);

constexpr uint32_t kBlockSize = 64;        // per-request DMA block: header + status
constexpr uint32_t kInlineHeaderMax = 48;  // headers up to this size live in the block
constexpr uint32_t kStatusOffset = 56;

Result<UniqueFd> make_eventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) return tl::unexpected(errno_error(Errc::kIo, "eventfd", errno));
  return fd;
}

void signal_fd(int fd) {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

void drain_fd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) == static_cast<ssize_t>(sizeof v)) {
  }
}

Error prefixed(const std::string& what, const Error& e) { return Error(e.code, what + ": " + e.message); }

}  // namespace

const char* key_mode_name(KeyMode m) {
  switch (m) {
    case KeyMode::kNone: return "none";
    case KeyMode::kInBand: return "in-band";
    case KeyMode::kOutOfBand: return "out-of-band";
  }
  return "?";
}

const char* op_name(Op op) {
  switch (op) {
    case Op::kRead: return "read";
    case Op::kWrite: return "write";
    case Op::kFlush: return "flush";
    case Op::kDiscard: return "discard";
    case Op::kWriteZeroes: return "write-zeroes";
    case Op::kGetId: return "get-id";
    case Op::kGetCapabilities: return "get-capabilities";
  }
  return "?";
}

Status status_to_error(uint8_t status, const std::string& what) {
  switch (status) {
    case blk::kStatusOk: return {};
    case blk::kStatusIoErr: return fail(Errc::kIo, "{}: device returned IOERR", what);
    case blk::kStatusUnsupp: return fail(Errc::kUnsupported, "{}: device returned UNSUPP", what);
    default: return fail(Errc::kProtocol, "{}: device returned status byte {}", what, status);
  }
}

// ---------------------------------------------------------------------------------
// One virtqueue: rings, eventfds, in-flight request contexts, completion thread.

struct Ctx {
  GuestAddr block{0};         // header (when small) + status byte
  GuestAddr header_addr{0};   // separately allocated header (when large), else 0
  GuestAddr data{0};          // out bytes followed by in bytes (0 = none)
  uint64_t out_len = 0;
  uint64_t in_len = 0;
  std::span<uint8_t> in_dst;
  bool secret = false;
  RawCallback cb;
  KeyslotManager::Lease lease;
};

struct Queue {
  uint16_t index = 0;
  std::shared_ptr<DriverMemory> mem;
  std::unique_ptr<DriverQueue> dq;
  UniqueFd kick, call, stop;
  int conn_fd = -1;
  CompletionMode mode = CompletionMode::kInterrupt;
  bool event_idx = false;
  bool indirect = false;
  uint32_t max_seg = 0;

  std::mutex mu;
  std::condition_variable cv;  // a completion happened (space, drain)
  std::vector<Ctx*> by_head;
  std::vector<std::unique_ptr<Ctx>> ctxs;
  std::vector<Ctx*> free_ctx;
  size_t in_flight = 0;
  std::optional<Error> dead;  // the back-end went away
  std::thread thread;
  std::atomic<std::thread::id> thread_id{};

  std::atomic<uint64_t> submitted{0}, completed{0}, kicks{0}, interrupts{0};

  ~Queue() {
    for (auto& c : ctxs) {
      if (c->block.value != 0) mem->free(c->block);
    }
    dq.reset();
  }

  void run();
  void reap();
  void finish(Ctx* c, Result<RawResult> r);
  void fail_all(const Error& e);
};

void Queue::finish(Ctx* c, Result<RawResult> r) {
  uint8_t* base = mem->ptr(c->data, std::max<uint64_t>(c->out_len + c->in_len, 1));
  if (r && c->in_len > 0 && base != nullptr && !c->in_dst.empty()) {
    std::memcpy(c->in_dst.data(), base + c->out_len, std::min<uint64_t>(c->in_len, c->in_dst.size()));
  }
  if (c->secret) {
    if (base != nullptr) secure_zero(base, c->out_len + c->in_len);
    if (uint8_t* b = mem->ptr(c->block, kBlockSize)) secure_zero(b, kBlockSize);
  }
  if (c->data.value != 0) mem->free(c->data);
  if (c->header_addr.value != 0) mem->free(c->header_addr);
  RawCallback cb = std::move(c->cb);
  c->lease.release();
  c->data = GuestAddr{0};
  c->header_addr = GuestAddr{0};
  c->in_dst = {};
  {
    std::lock_guard lk(mu);
    free_ctx.push_back(c);
    --in_flight;
  }
  cv.notify_all();
  completed.fetch_add(1, std::memory_order_relaxed);
  if (cb) cb(std::move(r));
}

void Queue::reap() {
  for (;;) {
    Ctx* c = nullptr;
    std::optional<UsedElem> u;
    {
      // ORDER: get_used() frees the chain's descriptors; the head must leave
      // by_head under the same lock, before a submitter can reuse it.
      std::lock_guard lk(mu);
      u = dq->get_used();
      if (!u) break;
      if (u->head < by_head.size()) c = std::exchange(by_head[u->head], nullptr);
    }
    if (c == nullptr) {
      spdlog::warn("queue {}: device completed unknown head {}", index, u->head);
      continue;
    }
    uint8_t* block = mem->ptr(c->block, kBlockSize);
    RawResult rr;
    rr.status = block[kStatusOffset];
    rr.used_len = u->len;
    finish(c, rr);
  }
}

void Queue::fail_all(const Error& e) {
  std::vector<Ctx*> pending;
  {
    std::lock_guard lk(mu);
    if (!dead) dead = e;
    for (auto& c : by_head) {
      if (c != nullptr) pending.push_back(std::exchange(c, nullptr));
    }
  }
  for (Ctx* c : pending) finish(c, tl::unexpected(e));
}

void Queue::run() {
  thread_id.store(std::this_thread::get_id());
  if (mode == CompletionMode::kPoll) dq->disable_interrupts();
  for (;;) {
    if (mode == CompletionMode::kInterrupt) {
      pollfd fds[3] = {{call.get(), POLLIN, 0}, {stop.get(), POLLIN, 0}, {conn_fd, POLLRDHUP, 0}};
      int n = ::poll(fds, conn_fd >= 0 ? 3 : 2, -1);
      if (n < 0 && errno == EINTR) continue;
      if (fds[1].revents != 0) break;
      if (fds[0].revents != 0) {
        drain_fd(call.get());
        interrupts.fetch_add(1, std::memory_order_relaxed);
      }
      reap();
      if (event_idx) {
        dq->enable_interrupts();
        reap();
      }
      if (conn_fd >= 0 && (fds[2].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
        reap();
        fail_all(Error(Errc::kClosed, "the back-end closed the connection"));
        // Keep serving stop; nothing more can complete.
        pollfd s{stop.get(), POLLIN, 0};
        while (::poll(&s, 1, -1) < 0 && errno == EINTR) {
        }
        break;
      }
    } else {
      // Busy-poll the used ring; look at the socket and the stop fd now and then.
      for (int spin = 0; spin < 4096 && !dq->has_used(); ++spin) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      reap();
      pollfd fds[2] = {{stop.get(), POLLIN, 0}, {conn_fd, POLLRDHUP, 0}};
      int n = ::poll(fds, conn_fd >= 0 ? 2 : 1, 0);
      if (n > 0 && fds[0].revents != 0) break;
      if (n > 0 && conn_fd >= 0 && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
        reap();
        fail_all(Error(Errc::kClosed, "the back-end closed the connection"));
        pollfd s{stop.get(), POLLIN, 0};
        while (::poll(&s, 1, -1) < 0 && errno == EINTR) {
        }
        break;
      }
      std::this_thread::yield();
    }
  }
}

// ---------------------------------------------------------------------------------

struct Device::Impl {
  ConnectOptions opts;
  std::unique_ptr<VhostUserFrontend> fe;
  std::shared_ptr<DriverMemory> mem;
  uint64_t offered = 0;
  uint64_t negotiated = 0;  // without bit 30
  uint64_t wire_features = 0;  // as sent in SET_FEATURES (with bit 30)
  uint64_t protocol = 0;
  uint16_t device_queues = 1;
  uint16_t nq = 1;
  uint32_t hdr_size = blk::kPlainHeaderSize;
  DeviceConfig cfg;
  std::vector<ice::Capability> caps;
  KeyMode key_mode = KeyMode::kNone;
  std::optional<SecureWorldClient> sw;
  std::mutex sw_mu;
  std::unique_ptr<KeyslotManager> ksm;
  std::vector<std::unique_ptr<Queue>> queues;
  std::mutex mem_mu;
  std::condition_variable mem_cv;

  Status setup_connection();
  Status setup_queues();
  void stop_queues();
  Status read_config_space();
  bool on_completion_thread() const;
  Result<GuestAddr> alloc_wait(uint64_t size, uint64_t align);
  void free_mem(GuestAddr a);

  Status submit_raw(uint16_t q, std::span<const uint8_t> header, std::span<const uint8_t> out,
                    std::span<uint8_t> in, bool secret, KeyslotManager::Lease lease, RawCallback cb);
  std::vector<uint8_t> header(uint32_t type, uint64_t sector, uint8_t slot = 0, uint8_t activate = 0,
                              uint64_t dun = 0) const;
  Status program_slot(uint8_t wire_slot, const ice::Key& key, uint16_t q);
  Status evict_slot(uint8_t wire_slot, uint16_t q);
  Status sync(uint16_t q, const std::string& what, std::span<const uint8_t> header, std::span<const uint8_t> out,
              std::span<uint8_t> in, bool secret = false);
};

bool Device::Impl::on_completion_thread() const {
  const auto me = std::this_thread::get_id();
  for (const auto& q : queues) {
    if (q->thread_id.load() == me) return true;
  }
  return false;
}

Result<GuestAddr> Device::Impl::alloc_wait(uint64_t size, uint64_t align) {
  for (;;) {
    auto a = mem->alloc(size, align);
    if (a || a.error().code != Errc::kBusy) return a;
    if (on_completion_thread()) return a;
    std::unique_lock lk(mem_mu);
    mem_cv.wait_for(lk, std::chrono::milliseconds(20));
  }
}

void Device::Impl::free_mem(GuestAddr a) {
  mem->free(a);
  mem_cv.notify_all();
}

std::vector<uint8_t> Device::Impl::header(uint32_t type, uint64_t sector, uint8_t slot, uint8_t activate,
                                          uint64_t dun) const {
  return blk::encode_header(hdr_size, type, sector, slot, activate, dun);
}

Status Device::Impl::submit_raw(uint16_t qi, std::span<const uint8_t> hdr, std::span<const uint8_t> out,
                                std::span<uint8_t> in, bool secret, KeyslotManager::Lease lease, RawCallback cb) {
  if (qi >= queues.size()) return fail(Errc::kInvalidArgument, "queue {} does not exist ({} queues)", qi, queues.size());
  Queue& q = *queues[qi];
  if (hdr.empty()) return fail(Errc::kInvalidArgument, "empty request header");
  const uint64_t data_len = out.size() + in.size();
  if (data_len + hdr.size() > mem->size() / 2) {
    return fail(Errc::kInvalidArgument, "request of {} bytes is larger than half the driver memory ({} bytes)",
                data_len, mem->size());
  }
  {
    std::lock_guard lk(q.mu);
    if (q.dead) return tl::unexpected(*q.dead);
  }
  // Take a context (one per possible in-flight chain).
  Ctx* c = nullptr;
  {
    std::unique_lock lk(q.mu);
    while (q.free_ctx.empty()) {
      if (on_completion_thread()) return fail(Errc::kBusy, "queue {} is full", qi);
      q.cv.wait_for(lk, std::chrono::milliseconds(20));
      if (q.dead) return tl::unexpected(*q.dead);
    }
    c = q.free_ctx.back();
    q.free_ctx.pop_back();
    ++q.in_flight;
  }
  auto give_back = [&] {
    if (c->data.value != 0) free_mem(std::exchange(c->data, GuestAddr{0}));
    if (c->header_addr.value != 0) free_mem(std::exchange(c->header_addr, GuestAddr{0}));
    std::lock_guard lk(q.mu);
    q.free_ctx.push_back(c);
    --q.in_flight;
    q.cv.notify_all();
  };
  c->out_len = out.size();
  c->in_len = in.size();
  c->in_dst = in;
  c->secret = secret;
  uint8_t* block = mem->ptr(c->block, kBlockSize);
  GuestAddr hdr_addr = c->block;
  if (hdr.size() <= kInlineHeaderMax) {
    std::memcpy(block, hdr.data(), hdr.size());
  } else {
    auto a = alloc_wait(hdr.size(), 64);
    if (!a) {
      give_back();
      return tl::unexpected(a.error());
    }
    c->header_addr = *a;
    hdr_addr = *a;
    std::memcpy(mem->ptr(*a, hdr.size()), hdr.data(), hdr.size());
  }
  block[kStatusOffset] = 0xff;  // so a completion without a status write is visible
  if (data_len > 0) {
    auto a = alloc_wait(data_len, 4096);
    if (!a) {
      give_back();
      return tl::unexpected(a.error());
    }
    c->data = *a;
    uint8_t* p = mem->ptr(*a, data_len);
    if (!out.empty()) std::memcpy(p, out.data(), out.size());
    if (!in.empty()) std::memset(p + out.size(), 0, in.size());
  }
  // Descriptors: header | out segments | in segments | status.
  std::vector<Buffer> bufs;
  bufs.push_back({hdr_addr, static_cast<uint32_t>(hdr.size()), false});
  auto add_range = [&](uint64_t off, uint64_t len, bool writable) {
    while (len > 0) {
      const uint64_t n = std::min<uint64_t>(len, q.max_seg);
      bufs.push_back({GuestAddr{c->data.value + off}, static_cast<uint32_t>(n), writable});
      off += n;
      len -= n;
    }
  };
  add_range(0, out.size(), false);
  add_range(out.size(), in.size(), true);
  bufs.push_back({GuestAddr{c->block.value + kStatusOffset}, 1, true});
  c->cb = std::move(cb);
  c->lease = std::move(lease);

  std::unique_lock lk(q.mu);
  for (;;) {
    if (q.dead) {
      lk.unlock();
      c->cb = nullptr;
      c->lease.release();
      give_back();
      return tl::unexpected(*q.dead);
    }
    const bool use_indirect = q.indirect && bufs.size() > 2;
    auto head = q.dq->add(bufs, use_indirect);
    if (head) {
      q.by_head[*head] = c;
      q.dq->publish();
      q.submitted.fetch_add(1, std::memory_order_relaxed);
      if (q.dq->needs_kick()) {
        q.kicks.fetch_add(1, std::memory_order_relaxed);
        signal_fd(q.kick.get());
      }
      return {};
    }
    if (head.error().code != Errc::kBusy || on_completion_thread()) {
      lk.unlock();
      c->cb = nullptr;
      c->lease.release();
      give_back();
      return fail(head.error().code, "queue {}: {}", qi, head.error().message);
    }
    q.cv.wait_for(lk, std::chrono::milliseconds(20));
  }
}

Status Device::Impl::sync(uint16_t q, const std::string& what, std::span<const uint8_t> hdr,
                          std::span<const uint8_t> out, std::span<uint8_t> in, bool secret) {
  if (on_completion_thread()) return fail(Errc::kBusy, "{}: synchronous call from a completion callback", what);
  std::promise<Result<RawResult>> p;
  auto f = p.get_future();
  ICEBLK_TRY(submit_raw(q, hdr, out, in, secret, {}, [&p](Result<RawResult> r) { p.set_value(std::move(r)); })
                 .map_error([&](const Error& e) { return prefixed(what, e); }));
  auto r = f.get();
  if (!r) return tl::unexpected(prefixed(what, r.error()));
  return status_to_error(r->status, what);
}

Status Device::Impl::program_slot(uint8_t wire_slot, const ice::Key& key, uint16_t q) {
  std::array<uint8_t, ice::kKeyBlobSize> blob{};
  Status st = ice::encode_key_blob(key.mode(), key.material(), blob);
  if (st) {
    auto h = header(blk::kTypeIceProgramKey, 0, wire_slot);
    st = sync(q, fmt::format("program-key slot {}", wire_slot), h, blob, {}, /*secret=*/true);
  }
  secure_zero(blob.data(), blob.size());
  return st;
}

Status Device::Impl::evict_slot(uint8_t wire_slot, uint16_t q) {
  auto h = header(blk::kTypeIceEvictKey, 0, wire_slot);
  return sync(q, fmt::format("evict-key slot {}", wire_slot), h, {}, {});
}

Status Device::Impl::read_config_space() {
  // Newer devices have 100 bytes (spec §2); older ones stop earlier (QEMU's
  // struct sizes: 96 with zoned, 72 with secure erase, 60 before).
  for (uint32_t size : {blk::kConfigSize, 96u, 72u, 60u}) {
    auto r = fe->get_config(0, size);
    if (!r) {
      if (r.error().code == Errc::kOutOfRange) continue;
      return tl::unexpected(r.error());
    }
    std::vector<uint8_t> raw = std::move(*r);
    blk::BlkConfig c{};
    std::memcpy(&c, raw.data(), std::min<size_t>(raw.size(), sizeof c));
    cfg.raw = raw;
    cfg.capacity_sectors = c.capacity;
    cfg.size_max = c.size_max;
    cfg.seg_max = c.seg_max;
    cfg.blk_size = c.blk_size;
    cfg.physical_block_exp = c.physical_block_exp;
    cfg.min_io_size = c.min_io_size;
    cfg.opt_io_size = c.opt_io_size;
    cfg.writeback = c.writeback;
    cfg.num_queues = c.num_queues;
    cfg.max_discard_sectors = c.max_discard_sectors;
    cfg.max_discard_seg = c.max_discard_seg;
    cfg.discard_sector_alignment = c.discard_sector_alignment;
    cfg.max_write_zeroes_sectors = c.max_write_zeroes_sectors;
    cfg.max_write_zeroes_seg = c.max_write_zeroes_seg;
    cfg.write_zeroes_may_unmap = c.write_zeroes_may_unmap;
    const uint16_t si = c.slot_info;
    cfg.max_slots = static_cast<uint8_t>(si >> 8);
    cfg.slot_offset = static_cast<uint8_t>(si & 0xff);
    cfg.capability_num = c.capability_num;
    return {};
  }
  return fail(Errc::kUnsupported, "vhost-user GET_CONFIG: the back-end answers no config size we know");
}

Status Device::Impl::setup_connection() {
  VhostUserFrontend::Options fo;
  fo.reply_timeout_ms = opts.reply_timeout_ms;
  ICEBLK_ASSIGN_OR_RETURN(fe, VhostUserFrontend::connect(opts.socket_path, fo));
  ICEBLK_ASSIGN_OR_RETURN(offered, fe->get_features());
  if (!blk::has_feature(offered, blk::kFeatureVersion1)) {
    return fail(Errc::kUnsupported, "{}: the device does not offer VIRTIO_F_VERSION_1", opts.socket_path);
  }
  uint64_t wanted = kKnownFeatures;
  if (opts.want_ice) {
    wanted |= feature_bit(blk::kFeatureIce);
    if (opts.want_inband_keys) wanted |= feature_bit(blk::kFeatureIceInbandKeys);
  }
  if (opts.event_idx) wanted |= feature_bit(blk::kFeatureEventIdx);
  if (opts.indirect) wanted |= feature_bit(blk::kFeatureIndirectDesc);
  // Bit 23 is only valid with bit 22 (spec §1).
  if (!blk::has_feature(offered, blk::kFeatureIce)) wanted &= ~feature_bit(blk::kFeatureIceInbandKeys);
  ICEBLK_ASSIGN_OR_RETURN(auto n, fe->handshake(wanted));
  if ((n.protocol_features & vhost_user::pf_bit(vhost_user::kPfConfig)) == 0) {
    return fail(Errc::kUnsupported, "{}: the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG", opts.socket_path);
  }
  wire_features = n.features;
  negotiated = n.features & ~vhost_user::kProtocolFeaturesBit;
  protocol = n.protocol_features;
  device_queues = n.num_queues;
  hdr_size = blk::has_feature(negotiated, blk::kFeatureIce) ? blk::kIceHeaderSize : blk::kPlainHeaderSize;
  SharedRegion region{mem->guest_base(), mem->size(), mem->guest_base(), 0, mem->fd()};
  ICEBLK_TRY(fe->set_mem_table(std::span(&region, 1)));
  ICEBLK_TRY(read_config_space());
  return {};
}

Status Device::Impl::setup_queues() {
  const bool ev = blk::has_feature(negotiated, blk::kFeatureEventIdx);
  const bool ind = blk::has_feature(negotiated, blk::kFeatureIndirectDesc);
  uint32_t max_seg = 1u << 30;
  if (blk::has_feature(negotiated, VIRTIO_BLK_F_SIZE_MAX) && cfg.size_max >= 4096) {
    max_seg = cfg.size_max & ~uint32_t{511};
  }
  for (uint16_t i = 0; i < nq; ++i) {
    auto q = std::make_unique<Queue>();
    q->index = i;
    q->mem = mem;
    q->mode = opts.completion;
    q->event_idx = ev;
    q->indirect = ind;
    q->max_seg = max_seg;
    q->conn_fd = fe->connection().fd();
    ICEBLK_ASSIGN_OR_RETURN(q->dq, DriverQueue::create(mem, opts.queue_size, ev, ind));
    ICEBLK_ASSIGN_OR_RETURN(q->kick, make_eventfd());
    ICEBLK_ASSIGN_OR_RETURN(q->call, make_eventfd());
    ICEBLK_ASSIGN_OR_RETURN(q->stop, make_eventfd());
    q->by_head.assign(opts.queue_size, nullptr);
    for (uint32_t k = 0; k < opts.queue_size; ++k) {
      auto c = std::make_unique<Ctx>();
      ICEBLK_ASSIGN_OR_RETURN(c->block, mem->alloc(kBlockSize, kBlockSize));
      q->free_ctx.push_back(c.get());
      q->ctxs.push_back(std::move(c));
    }
    const virtio::QueueConfig qc = q->dq->device_config();
    VringSetup s;
    s.size = qc.size;
    s.desc_user_addr = qc.desc.value;
    s.avail_user_addr = qc.avail.value;
    s.used_user_addr = qc.used.value;
    s.base = 0;
    s.kick_fd = q->kick.get();
    s.call_fd = q->call.get();
    ICEBLK_TRY(fe->setup_vring(i, s).map_error(
        [&](const Error& e) { return prefixed(fmt::format("set up queue {}", i), e); }));
    if (ev && opts.completion == CompletionMode::kInterrupt) q->dq->enable_interrupts();
    Queue* raw = q.get();
    q->thread = std::thread([raw] { raw->run(); });
    // Back-ends should not rely on a first kick, but older ones start on it.
    signal_fd(q->kick.get());
    queues.push_back(std::move(q));
  }
  return {};
}

void Device::Impl::stop_queues() {
  for (auto& q : queues) {
    signal_fd(q->stop.get());
    if (q->thread.joinable()) q->thread.join();
  }
}

// ---------------------------------------------------------------------------------

Device::Device(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Device::~Device() {
  if (!impl_) return;
  impl_->stop_queues();
  impl_->fe.reset();  // closes the socket: the back-end stops the rings
  for (auto& q : impl_->queues) q->fail_all(Error(Errc::kClosed, "the device was closed"));
  impl_->ksm.reset();
  impl_->queues.clear();
}

Result<std::unique_ptr<Device>> Device::connect(const ConnectOptions& opts) {
  if (opts.queue_size == 0 || (opts.queue_size & (opts.queue_size - 1)) != 0 || opts.queue_size > 32768) {
    return fail(Errc::kInvalidArgument, "queue size {} is not a power of two in 1..32768", opts.queue_size);
  }
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  ICEBLK_ASSIGN_OR_RETURN(impl->mem, DriverMemory::create(opts.memory_size));
  ICEBLK_TRY(impl->setup_connection());
  Impl& d = *impl;
  uint16_t avail = d.device_queues;
  if (blk::has_feature(d.negotiated, blk::kFeatureMq) && d.cfg.num_queues != 0) {
    avail = std::min(avail, d.cfg.num_queues);
  } else if (!blk::has_feature(d.negotiated, blk::kFeatureMq)) {
    avail = 1;
  }
  d.nq = opts.num_queues == 0 ? avail : opts.num_queues;
  if (d.nq > avail) {
    return fail(Errc::kInvalidArgument, "{} queues requested, the device has {}", d.nq, avail);
  }
  std::unique_ptr<Device> dev(new Device(std::move(impl)));
  ICEBLK_TRY(d.setup_queues());

  if (dev->ice()) {
    d.key_mode = blk::has_feature(d.negotiated, blk::kFeatureIceInbandKeys) ? KeyMode::kInBand : KeyMode::kOutOfBand;
    if (d.cfg.capability_num > 0) {
      ICEBLK_ASSIGN_OR_RETURN(d.caps, dev->get_capabilities());
    }
    if (d.key_mode == KeyMode::kOutOfBand && !opts.secure_world_socket.empty()) {
      auto c = SecureWorldClient::connect(opts.secure_world_socket);
      if (!c) return tl::unexpected(prefixed(fmt::format("secure world {}", opts.secure_world_socket), c.error()));
      d.sw.emplace(std::move(*c));
    }
    Impl* ip = &d;
    auto program = [ip](uint32_t slot, const ice::Key& key) -> Status {
      if (ip->key_mode == KeyMode::kInBand) return ip->program_slot(static_cast<uint8_t>(slot), key, 0);
      std::lock_guard lk(ip->sw_mu);
      if (!ip->sw) {
        return fail(Errc::kUnsupported,
                    "out-of-band key mode (no VIRTIO_BLK_F_ICE_INBAND_KEYS): give the secure-world socket");
      }
      return ip->sw->set_key(PhysSlot{ip->cfg.slot_offset + slot}, key.mode(), key.material())
          .map_error([&](const Error& e) {
            return prefixed(fmt::format("secure world set-key physical slot {}", ip->cfg.slot_offset + slot), e);
          });
    };
    auto evict = [ip](uint32_t slot) -> Status {
      if (ip->key_mode == KeyMode::kInBand) return ip->evict_slot(static_cast<uint8_t>(slot), 0);
      std::lock_guard lk(ip->sw_mu);
      if (!ip->sw) return fail(Errc::kUnsupported, "out-of-band key mode: no secure-world socket");
      return ip->sw->invalidate_key(PhysSlot{ip->cfg.slot_offset + slot});
    };
    if (d.cfg.max_slots > 0) d.ksm = std::make_unique<KeyslotManager>(d.cfg.max_slots, program, evict);
  }
  return dev;
}

uint64_t Device::offered_features() const { return impl_->offered; }
uint64_t Device::negotiated_features() const { return impl_->negotiated; }
uint64_t Device::protocol_features() const { return impl_->protocol; }
bool Device::has_feature(unsigned bit) const { return blk::has_feature(impl_->negotiated, bit); }
bool Device::ice() const { return has_feature(blk::kFeatureIce); }
KeyMode Device::key_mode() const { return impl_->key_mode; }
uint32_t Device::header_size() const { return impl_->hdr_size; }
uint16_t Device::num_queues() const { return impl_->nq; }
uint16_t Device::queue_size() const { return impl_->opts.queue_size; }
const DeviceConfig& Device::config() const { return impl_->cfg; }
uint64_t Device::capacity_bytes() const { return impl_->cfg.capacity_sectors * kSectorSize; }
const std::vector<ice::Capability>& Device::capabilities() const { return impl_->caps; }
KeyslotManager* Device::keyslots() { return impl_->ksm.get(); }

QueueStats Device::queue_stats(uint16_t q) const {
  QueueStats s;
  if (q >= impl_->queues.size()) return s;
  const Queue& x = *impl_->queues[q];
  s.submitted = x.submitted.load();
  s.completed = x.completed.load();
  s.kicks = x.kicks.load();
  s.interrupts = x.interrupts.load();
  return s;
}

Result<std::vector<uint8_t>> Device::read_config(uint32_t offset, uint32_t size) {
  return impl_->fe->get_config(offset, size);
}

// --- requests ------------------------------------------------------------------------

namespace {
std::string describe(const Io& io, std::optional<uint8_t> slot) {
  std::string s;
  switch (io.op) {
    case Op::kRead:
      s = fmt::format("read {} bytes at offset {}", io.in.size(), io.offset);
      break;
    case Op::kWrite:
      s = fmt::format("write {} bytes at offset {}", io.out.size(), io.offset);
      break;
    case Op::kDiscard:
    case Op::kWriteZeroes:
      s = fmt::format("{} {} bytes at offset {}", op_name(io.op), io.length, io.offset);
      break;
    default:
      s = op_name(io.op);
  }
  s += fmt::format(" (queue {}", io.queue);
  if (io.key) s += fmt::format(", key '{}'", io.key->name);
  if (slot) s += fmt::format(", slot {}", *slot);
  if (io.key) s += fmt::format(", dun {}", io.key->dun);
  if (io.encryption) s += fmt::format(", dun {}", io.encryption->dun);
  s += ")";
  return s;
}
}  // namespace

Status Device::submit(Io io, Callback cb) {
  Impl& d = *impl_;
  const std::string base_what = describe(io, std::nullopt);
  if (io.queue >= d.nq) return fail(Errc::kInvalidArgument, "{}: queue {} does not exist", base_what, io.queue);
  const bool rw = io.op == Op::kRead || io.op == Op::kWrite;
  const bool crypt = io.encryption.has_value() || io.key.has_value();
  if (crypt && !rw) return fail(Errc::kInvalidArgument, "{}: only read and write can be encrypted", base_what);
  if (crypt && !ice()) {
    return fail(Errc::kUnsupported, "{}: encryption asked, but the device does not offer VIRTIO_BLK_F_ICE", base_what);
  }
  if (io.encryption && io.key) return fail(Errc::kInvalidArgument, "{}: give a slot or a key name, not both", base_what);
  const uint64_t len = io.op == Op::kRead ? io.in.size() : io.op == Op::kWrite ? io.out.size() : io.length;
  if (rw || io.op == Op::kDiscard || io.op == Op::kWriteZeroes) {
    if (io.offset % kSectorSize != 0 || len % kSectorSize != 0) {
      return fail(Errc::kMisaligned, "{}: offset and length must be multiples of 512", base_what);
    }
    auto end = checked_add(io.offset, len);
    if (!end || *end > capacity_bytes()) {
      return fail(Errc::kOutOfRange, "{}: beyond the device capacity ({} bytes)", base_what, capacity_bytes());
    }
  }
  if (io.op == Op::kWrite && has_feature(blk::kFeatureRo)) {
    return fail(Errc::kPermissionDenied, "{}: the device is read-only", base_what);
  }
  if (io.op == Op::kFlush && !has_feature(blk::kFeatureFlush)) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_FLUSH not negotiated", base_what);
  }
  if (io.op == Op::kDiscard && !has_feature(blk::kFeatureDiscard)) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_DISCARD not negotiated", base_what);
  }
  if (io.op == Op::kWriteZeroes && !has_feature(blk::kFeatureWriteZeroes)) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_WRITE_ZEROES not negotiated", base_what);
  }
  if (io.op == Op::kGetCapabilities && !ice()) {
    return fail(Errc::kUnsupported, "{}: VIRTIO_BLK_F_ICE not negotiated", base_what);
  }
  if ((io.op == Op::kDiscard || io.op == Op::kWriteZeroes) && (len == 0 || len / kSectorSize > UINT32_MAX)) {
    return fail(Errc::kInvalidArgument, "{}: length must be 1..2^32-1 sectors", base_what);
  }

  KeyslotManager::Lease lease;
  uint8_t slot = 0;
  uint64_t dun = 0;
  if (io.key) {
    if (!d.ksm) return fail(Errc::kUnsupported, "{}: the device has no keyslots", base_what);
    if (d.on_completion_thread()) {
      // acquire() may program a key synchronously, which a callback must not do.
      return fail(Errc::kBusy, "{}: named-key requests cannot be submitted from a completion callback", base_what);
    }
    auto l = d.ksm->acquire(io.key->name, d.opts.keyslot_timeout);
    if (!l) return tl::unexpected(prefixed(base_what, l.error()));
    lease = std::move(*l);
    const uint32_t dus = lease.mode().data_unit_size;
    if (io.offset % dus != 0 || len % dus != 0 || len == 0) {
      return fail(Errc::kMisaligned, "{}: offset and length must be non-zero multiples of the key's {}-byte data unit",
                  base_what, dus);
    }
    if (len / dus - 1 > UINT64_MAX - io.key->dun) {
      return fail(Errc::kOverflow, "{}: the last data unit number overflows 64 bits", base_what);
    }
    const uint32_t wire = d.key_mode == KeyMode::kOutOfBand ? d.cfg.slot_offset + lease.slot() : lease.slot();
    slot = static_cast<uint8_t>(wire);
    dun = io.key->dun;
  } else if (io.encryption) {
    slot = io.encryption->slot;
    dun = io.encryption->dun;
  }
  const std::string what = describe(io, crypt ? std::optional<uint8_t>(slot) : std::nullopt);

  std::vector<uint8_t> hdr;
  std::span<const uint8_t> out;
  std::span<uint8_t> in;
  blk::DiscardWriteZeroes seg{};
  const uint64_t sector = io.offset / kSectorSize;
  switch (io.op) {
    case Op::kRead:
      hdr = d.header(blk::kTypeIn, sector, slot, crypt ? 1 : 0, dun);
      in = io.in;
      break;
    case Op::kWrite:
      hdr = d.header(blk::kTypeOut, sector, slot, crypt ? 1 : 0, dun);
      out = io.out;
      break;
    case Op::kFlush:
      hdr = d.header(blk::kTypeFlush, 0);
      break;
    case Op::kDiscard:
    case Op::kWriteZeroes:
      hdr = d.header(io.op == Op::kDiscard ? blk::kTypeDiscard : blk::kTypeWriteZeroes, 0);
      seg.sector = sector;
      seg.num_sectors = static_cast<uint32_t>(len / kSectorSize);
      seg.flags = (io.op == Op::kWriteZeroes && io.unmap) ? blk::kWriteZeroesFlagUnmap : 0;
      out = std::span(reinterpret_cast<const uint8_t*>(&seg), sizeof seg);
      break;
    case Op::kGetId:
      hdr = d.header(blk::kTypeGetId, 0);
      in = io.in;
      break;
    case Op::kGetCapabilities:
      hdr = d.header(blk::kTypeGetCryptoCaps, 0);
      in = io.in;
      break;
  }
  auto done = [cb = std::move(cb), what](Result<RawResult> r) {
    if (!r) {
      cb(tl::unexpected(prefixed(what, r.error())));
      return;
    }
    cb(status_to_error(r->status, what));
  };
  return d.submit_raw(io.queue, hdr, out, in, false, std::move(lease), std::move(done))
      .map_error([&](const Error& e) { return prefixed(what, e); });
}

std::future<Status> Device::submit(Io io) {
  auto p = std::make_shared<std::promise<Status>>();
  auto f = p->get_future();
  Status st = submit(std::move(io), [p](Status s) { p->set_value(std::move(s)); });
  if (!st) p->set_value(std::move(st));
  return f;
}

Status Device::submit_raw(RawRequest req, RawCallback cb) {
  return impl_->submit_raw(req.queue, req.header, req.out, req.in, req.secret, {}, std::move(cb));
}

Result<RawResult> Device::execute_raw(RawRequest req) {
  if (impl_->on_completion_thread()) return fail(Errc::kBusy, "synchronous call from a completion callback");
  std::promise<Result<RawResult>> p;
  auto f = p.get_future();
  ICEBLK_TRY(submit_raw(std::move(req), [&p](Result<RawResult> r) { p.set_value(std::move(r)); }));
  return f.get();
}

namespace {
Status run_sync(Device& d, Io io) {
  auto f = d.submit(std::move(io));
  return f.get();
}
}  // namespace

namespace {
Io make_io(Op op, uint16_t q, uint64_t offset) {
  Io io;
  io.op = op;
  io.queue = q;
  io.offset = offset;
  return io;
}
Io read_io(uint16_t q, uint64_t offset, std::span<uint8_t> buf) {
  Io io = make_io(Op::kRead, q, offset);
  io.in = buf;
  return io;
}
Io write_io(uint16_t q, uint64_t offset, std::span<const uint8_t> buf) {
  Io io = make_io(Op::kWrite, q, offset);
  io.out = buf;
  return io;
}
}  // namespace

Status Device::read(uint64_t offset, std::span<uint8_t> buf, uint16_t q) {
  return run_sync(*this, read_io(q, offset, buf));
}
Status Device::read(uint64_t offset, std::span<uint8_t> buf, const Encryption& enc, uint16_t q) {
  Io io = read_io(q, offset, buf);
  io.encryption = enc;
  return run_sync(*this, std::move(io));
}
Status Device::read(uint64_t offset, std::span<uint8_t> buf, const KeyRef& key, uint16_t q) {
  Io io = read_io(q, offset, buf);
  io.key = key;
  return run_sync(*this, std::move(io));
}
Status Device::write(uint64_t offset, std::span<const uint8_t> buf, uint16_t q) {
  return run_sync(*this, write_io(q, offset, buf));
}
Status Device::write(uint64_t offset, std::span<const uint8_t> buf, const Encryption& enc, uint16_t q) {
  Io io = write_io(q, offset, buf);
  io.encryption = enc;
  return run_sync(*this, std::move(io));
}
Status Device::write(uint64_t offset, std::span<const uint8_t> buf, const KeyRef& key, uint16_t q) {
  Io io = write_io(q, offset, buf);
  io.key = key;
  return run_sync(*this, std::move(io));
}
Status Device::flush(uint16_t q) { return run_sync(*this, make_io(Op::kFlush, q, 0)); }
Status Device::discard(uint64_t offset, uint64_t length, uint16_t q) {
  Io io = make_io(Op::kDiscard, q, offset);
  io.length = length;
  return run_sync(*this, std::move(io));
}
Status Device::write_zeroes(uint64_t offset, uint64_t length, bool unmap, uint16_t q) {
  Io io = make_io(Op::kWriteZeroes, q, offset);
  io.length = length;
  io.unmap = unmap;
  return run_sync(*this, std::move(io));
}

Result<std::string> Device::get_id(uint16_t q) {
  std::array<uint8_t, blk::kIdBytes> id{};
  Io io = make_io(Op::kGetId, q, 0);
  io.in = id;
  ICEBLK_TRY(run_sync(*this, std::move(io)));
  size_t n = 0;
  while (n < id.size() && id[n] != 0) ++n;
  return std::string(reinterpret_cast<const char*>(id.data()), n);
}

Result<std::vector<ice::Capability>> Device::get_capabilities(uint16_t q) {
  std::vector<uint8_t> buf(size_t{impl_->cfg.capability_num} * sizeof(blk::CryptoCap));
  if (buf.empty()) return std::vector<ice::Capability>{};
  Io io = make_io(Op::kGetCapabilities, q, 0);
  io.in = buf;
  ICEBLK_TRY(run_sync(*this, std::move(io)));
  std::vector<ice::Capability> caps;
  for (size_t i = 0; i < impl_->cfg.capability_num; ++i) {
    auto c = load_obj<blk::CryptoCap>(buf.data() + i * sizeof(blk::CryptoCap));
    caps.push_back({static_cast<ice::Algorithm>(c.alg), c.data_unit_size_exp, static_cast<ice::KeySize>(c.key_size)});
  }
  return caps;
}

Status Device::program_key(uint8_t slot, const ice::Key& key, uint16_t q) {
  if (impl_->key_mode != KeyMode::kInBand) {
    return fail(Errc::kUnsupported, "program-key slot {}: in-band keys (VIRTIO_BLK_F_ICE_INBAND_KEYS) not negotiated",
                slot);
  }
  return impl_->program_slot(slot, key, q);
}

Status Device::evict_key(uint8_t slot, uint16_t q) {
  if (impl_->key_mode != KeyMode::kInBand) {
    return fail(Errc::kUnsupported, "evict-key slot {}: in-band keys (VIRTIO_BLK_F_ICE_INBAND_KEYS) not negotiated",
                slot);
  }
  return impl_->evict_slot(slot, q);
}

Status Device::add_key(const std::string& name, const ice::CryptoMode& mode, std::span<const uint8_t> key) {
  const std::string alg = ice::algorithm_name(mode.alg, mode.key_size);
  if (!ice()) {
    return fail(Errc::kUnsupported, "key '{}': the device does not offer inline encryption (VIRTIO_BLK_F_ICE)", name);
  }
  ICEBLK_ASSIGN_OR_RETURN(size_t need, ice::key_length(mode.alg, mode.key_size)
                                           .map_error([&](const Error& e) { return prefixed("key '" + name + "'", e); }));
  if (key.size() != need) {
    return fail(Errc::kInvalidArgument, "key '{}': {} needs a {}-byte key, got {} bytes", name, alg, need, key.size());
  }
  auto exp = ice::data_unit_size_exp(mode.data_unit_size);
  if (!exp) return fail(Errc::kInvalidArgument, "key '{}': bad data unit size {}", name, mode.data_unit_size);
  const ice::Capability want{mode.alg, *exp, mode.key_size};
  if (std::find(impl_->caps.begin(), impl_->caps.end(), want) == impl_->caps.end()) {
    return fail(Errc::kUnsupported, "key '{}': the device does not advertise {} with {}-byte data units", name, alg,
                mode.data_unit_size);
  }
  if (!impl_->ksm) return fail(Errc::kUnsupported, "key '{}': the device has no keyslots", name);
  ICEBLK_ASSIGN_OR_RETURN(ice::Key k, ice::Key::create(mode, key).map_error(
                                          [&](const Error& e) { return prefixed("key '" + name + "'", e); }));
  return impl_->ksm->add_key(name, std::move(k));
}

Status Device::remove_key(const std::string& name) {
  if (!impl_->ksm) return fail(Errc::kNotFound, "no key named '{}'", name);
  return impl_->ksm->remove_key(name);
}

void Device::drain() {
  for (auto& q : impl_->queues) {
    std::unique_lock lk(q->mu);
    q->cv.wait(lk, [&] { return q->in_flight == 0; });
  }
}

Status Device::reprogram_keys() {
  if (!impl_->ksm) return {};
  return impl_->ksm->reprogram_all();
}

Status Device::reset() {
  Impl& d = *impl_;
  if (d.on_completion_thread()) return fail(Errc::kBusy, "reset from a completion callback");
  drain();
  d.stop_queues();
  d.queues.clear();
  ICEBLK_TRY(d.fe->reset_device());
  ICEBLK_TRY(d.fe->set_features(d.wire_features));
  SharedRegion region{d.mem->guest_base(), d.mem->size(), d.mem->guest_base(), 0, d.mem->fd()};
  ICEBLK_TRY(d.fe->set_mem_table(std::span(&region, 1)));
  ICEBLK_TRY(d.setup_queues());
  // Spec §8: the device evicted its in-band keys; out-of-band keys survive.
  if (d.key_mode == KeyMode::kInBand) return reprogram_keys();
  return {};
}

Status Device::reconnect() {
  Impl& d = *impl_;
  if (d.on_completion_thread()) return fail(Errc::kBusy, "reconnect from a completion callback");
  d.stop_queues();
  d.fe.reset();
  for (auto& q : d.queues) q->fail_all(Error(Errc::kClosed, "reconnecting"));
  d.queues.clear();
  const uint64_t before = d.negotiated;
  ICEBLK_TRY(d.setup_connection());
  if (d.negotiated != before) {
    return fail(Errc::kProtocol, "reconnect: the device now negotiates features {:#x} instead of {:#x}", d.negotiated,
                before);
  }
  ICEBLK_TRY(d.setup_queues());
  if (d.key_mode == KeyMode::kInBand) return reprogram_keys();
  return {};
}

}  // namespace iceblk::driver
