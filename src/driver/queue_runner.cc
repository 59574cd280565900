#include "driver/queue_runner.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "base/cpu_relax.h"
#include "base/secret_bytes.h"

namespace iceblk::driver {

namespace {

constexpr uint32_t kBlockSize = 64;        // per-request DMA block: header + status
constexpr uint32_t kInlineHeaderMax = 48;  // headers up to this size live in the block
constexpr uint32_t kStatusOffset = 56;

void drain_fd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) == static_cast<ssize_t>(sizeof v)) {
  }
}

}  // namespace

Result<UniqueFd> make_eventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) return tl::unexpected(errno_error(Errc::kIo, "eventfd", errno));
  return fd;
}

void signal_fd(int fd) {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

// --- BufferPool ---------------------------------------------------------------------

Result<GuestAddr> BufferPool::alloc(uint64_t size, uint64_t align, bool wait) {
  std::unique_lock lk(mu_);
  for (;;) {
    auto a = mem_->alloc(size, align);
    if (a || a.error().code != Errc::kBusy || !wait) return a;
    cv_.wait(lk);
  }
}

void BufferPool::free(GuestAddr a) {
  {
    std::lock_guard lk(mu_);
    mem_->free(a);
  }
  cv_.notify_all();
}

void BufferPool::notify() {
  { std::lock_guard lk(mu_); }  // orders against a waiter between its alloc and its wait
  cv_.notify_all();
}

// --- SyncWaiter ---------------------------------------------------------------------

void SyncWaiter::deliver_in(std::span<const uint8_t> in) {
  std::lock_guard lk(mu_);
  if (!abandoned_ && !in_dst_.empty())
    std::memcpy(in_dst_.data(), in.data(), std::min(in.size(), in_dst_.size()));
}

void SyncWaiter::complete(Result<RawResult> r) {
  {
    std::lock_guard lk(mu_);
    result_ = std::move(r);
  }
  cv_.notify_all();
}

std::optional<Result<RawResult>> SyncWaiter::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  if (timeout.count() <= 0) {
    cv_.wait(lk, [&] { return result_.has_value(); });
  } else if (!cv_.wait_for(lk, timeout, [&] { return result_.has_value(); })) {
    abandoned_ = true;  // under mu_: deliver_in() sees it before touching in_dst_
    in_dst_ = {};
    return std::nullopt;
  }
  return std::move(result_);
}

// --- QueueRunner --------------------------------------------------------------------

struct QueueRunner::InFlight {
  GuestAddr block{0};        // header (when small) + status byte
  GuestAddr header_addr{0};  // separately allocated header (when large), else 0
  GuestAddr data{0};         // out bytes followed by in bytes (0 = none)
  uint64_t out_len = 0;
  uint64_t in_len = 0;
  std::span<uint8_t> in_dst;
  bool secret = false;
  RawCallback cb;
  std::shared_ptr<SyncWaiter> waiter;
  KeyslotManager::Lease lease;
};

QueueRunner::QueueRunner(BufferPool& pool, const Options& o) : pool_(pool), o_(o) {}

Result<std::unique_ptr<QueueRunner>> QueueRunner::create(BufferPool& pool, const Options& o) {
  std::unique_ptr<QueueRunner> q(new QueueRunner(pool, o));
  ICEBLK_ASSIGN_OR_RETURN(
      q->ring_, virtio::DriverQueue::create(pool.memory_ptr(), o.size, o.event_idx, o.indirect));
  ICEBLK_ASSIGN_OR_RETURN(q->kick_, make_eventfd());
  ICEBLK_ASSIGN_OR_RETURN(q->call_, make_eventfd());
  ICEBLK_ASSIGN_OR_RETURN(q->stop_, make_eventfd());
  q->by_head_.assign(o.size, nullptr);
  for (uint32_t k = 0; k < o.size; ++k) {
    auto c = std::make_unique<InFlight>();
    ICEBLK_ASSIGN_OR_RETURN(c->block, pool.memory().alloc(kBlockSize, kBlockSize));
    q->free_.push_back(c.get());
    q->in_flight_pool_.push_back(std::move(c));
  }
  return q;
}

QueueRunner::~QueueRunner() {
  stop();
  for (auto& c : in_flight_pool_) {
    if (c->block.value != 0) pool_.free(c->block);
  }
  ring_.reset();
}

void QueueRunner::start() {
  if (o_.event_idx && o_.mode == CompletionMode::kInterrupt) ring_->enable_interrupts();
  thread_ = std::thread([this] { run(); });
}

void QueueRunner::stop() {
  if (!thread_.joinable()) return;
  signal_fd(stop_.get());
  thread_.join();
}

QueueStats QueueRunner::stats() const {
  return {submitted_.load(), completed_.load(), kicks_.load(), interrupts_.load()};
}

void QueueRunner::give_back(InFlight* c, bool settled) {
  if (c->data.value != 0) pool_.free(std::exchange(c->data, GuestAddr{0}));
  if (c->header_addr.value != 0) pool_.free(std::exchange(c->header_addr, GuestAddr{0}));
  c->cb = nullptr;
  c->waiter.reset();
  c->lease.release();
  {
    std::lock_guard lk(mu_);
    free_.push_back(c);
    if (settled) --in_flight_;
  }
  cv_.notify_all();
}

void QueueRunner::finish(InFlight* c, Result<RawResult> r) {
  virtio::DriverMemory& mem = pool_.memory();
  uint8_t* base = mem.ptr(c->data, std::max<uint64_t>(c->out_len + c->in_len, 1));
  if (r && c->in_len > 0 && base != nullptr) {
    if (c->waiter) {
      c->waiter->deliver_in({base + c->out_len, c->in_len});
    } else if (!c->in_dst.empty()) {
      std::memcpy(c->in_dst.data(), base + c->out_len,
                  std::min<uint64_t>(c->in_len, c->in_dst.size()));
    }
  }
  // ORDER: key bytes leave the shared memory before the caller learns of the
  // completion (a caller may then let the device be dumped).
  if (c->secret) {
    if (base != nullptr) secure_zero(base, c->out_len + c->in_len);
    if (uint8_t* b = mem.ptr(c->block, kBlockSize)) secure_zero(b, kBlockSize);
  }
  RawCallback cb = std::move(c->cb);
  std::shared_ptr<SyncWaiter> waiter = std::move(c->waiter);
  c->in_dst = {};
  // ORDER: the slot goes back first (a callback may submit again), but the request
  // counts as in flight until its callback has returned, so drain() never returns
  // before the last callback ran (TSan run: drain() returned with 255 of 256 run).
  give_back(c, /*settled=*/false);
  pool_.notify();  // the ring may have freed an indirect table too
  completed_.fetch_add(1, std::memory_order_relaxed);
  if (waiter) {
    waiter->complete(std::move(r));
  } else if (cb) {
    cb(std::move(r));
  }
  {
    std::lock_guard lk(mu_);
    --in_flight_;
  }
  cv_.notify_all();
}

void QueueRunner::reap() {
  virtio::DriverMemory& mem = pool_.memory();
  for (;;) {
    InFlight* c = nullptr;
    std::optional<virtio::UsedElem> u;
    {
      // ORDER: get_used() frees the chain's descriptors; the head must leave
      // by_head under the same lock, before a submitter can reuse it.
      std::lock_guard lk(mu_);
      u = ring_->get_used();
      if (!u) break;
      if (u->head < by_head_.size()) c = std::exchange(by_head_[u->head], nullptr);
    }
    if (c == nullptr) {
      spdlog::warn("queue {}: device completed unknown head {}", o_.index, u->head);
      continue;
    }
    RawResult rr;
    rr.status = mem.ptr(c->block, kBlockSize)[kStatusOffset];
    rr.used_len = u->len;
    finish(c, rr);
  }
}

void QueueRunner::fail_all(const Error& e) {
  std::vector<InFlight*> pending;
  {
    std::lock_guard lk(mu_);
    if (!dead_) dead_ = e;
    for (auto& c : by_head_) {
      if (c != nullptr) pending.push_back(std::exchange(c, nullptr));
    }
  }
  cv_.notify_all();  // submitters waiting for room see dead_
  for (InFlight* c : pending) finish(c, tl::unexpected(e));
}

void QueueRunner::drain() {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return in_flight_ == 0; });
}

// One loop for both completion modes: interrupt mode sleeps in poll() on the call
// eventfd; poll mode spins on the used ring and looks at the stop fd and the socket
// without sleeping.
void QueueRunner::run() {
  thread_id_.store(std::this_thread::get_id());
  const bool polling = o_.mode == CompletionMode::kPoll;
  if (polling) ring_->disable_interrupts();
  for (;;) {
    if (polling) {
      for (int spin = 0; spin < 4096 && !ring_->has_used(); ++spin) cpu_relax();
    }
    // poll() ignores negative fds: no call fd in poll mode, no socket when unknown.
    pollfd fds[3] = {{stop_.get(), POLLIN, 0}, {o_.conn_fd, POLLRDHUP, 0}, {polling ? -1 : call_.get(), POLLIN, 0}};
    const int n = ::poll(fds, 3, polling ? 0 : -1);
    if (n < 0 && errno == EINTR) continue;
    if (fds[0].revents != 0) break;
    if (fds[2].revents != 0) {
      drain_fd(call_.get());
      interrupts_.fetch_add(1, std::memory_order_relaxed);
    }
    reap();
    if (!polling && o_.event_idx) {
      ring_->enable_interrupts();
      reap();
    }
    if ((fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
      reap();
      fail_all(Error(Errc::kClosed, "the back-end closed the connection"));
      // Keep serving stop; nothing more can complete.
      pollfd s{stop_.get(), POLLIN, 0};
      while (::poll(&s, 1, -1) < 0 && errno == EINTR) {
      }
      break;
    }
    if (polling) std::this_thread::yield();
  }
}

Status QueueRunner::submit(RingRequest r, bool may_wait) {
  if (r.header.empty()) return fail(Errc::kInvalidArgument, "empty request header");
  virtio::DriverMemory& mem = pool_.memory();
  const uint64_t data_len = r.out.size() + r.in.size();
  if (data_len + r.header.size() > mem.size() / 2) {
    return fail(Errc::kInvalidArgument, "request of {} bytes is larger than half the driver memory ({} bytes)",
                data_len, mem.size());
  }
  // Take a context (one per possible in-flight chain).
  InFlight* c = nullptr;
  {
    std::unique_lock lk(mu_);
    if (dead_) return tl::unexpected(*dead_);
    while (free_.empty()) {
      if (!may_wait) return fail(Errc::kBusy, "queue {} is full", o_.index);
      cv_.wait(lk);
      if (dead_) return tl::unexpected(*dead_);
    }
    c = free_.back();
    free_.pop_back();
    ++in_flight_;
  }
  c->out_len = r.out.size();
  c->in_len = r.in.size();
  c->in_dst = r.in;
  c->secret = r.secret;
  uint8_t* block = mem.ptr(c->block, kBlockSize);
  GuestAddr hdr_addr = c->block;
  if (r.header.size() <= kInlineHeaderMax) {
    std::memcpy(block, r.header.data(), r.header.size());
  } else {
    auto a = pool_.alloc(r.header.size(), 64, may_wait);
    if (!a) {
      give_back(c);
      return tl::unexpected(a.error());
    }
    c->header_addr = *a;
    hdr_addr = *a;
    std::memcpy(mem.ptr(*a, r.header.size()), r.header.data(), r.header.size());
  }
  block[kStatusOffset] = 0xff;  // so a completion without a status write is visible
  if (data_len > 0) {
    auto a = pool_.alloc(data_len, 4096, may_wait);
    if (!a) {
      give_back(c);
      return tl::unexpected(a.error());
    }
    c->data = *a;
    uint8_t* p = mem.ptr(*a, data_len);
    if (!r.out.empty()) std::memcpy(p, r.out.data(), r.out.size());
    if (!r.in.empty()) std::memset(p + r.out.size(), 0, r.in.size());
  }
  std::vector<virtio::Buffer> bufs;
  bufs.push_back({hdr_addr, static_cast<uint32_t>(r.header.size()), false});
  auto add_range = [&](uint64_t off, uint64_t len, bool writable) {
    while (len > 0) {
      const uint64_t n = std::min<uint64_t>(len, o_.max_seg);
      bufs.push_back({GuestAddr{c->data.value + off}, static_cast<uint32_t>(n), writable});
      off += n;
      len -= n;
    }
  };
  add_range(0, r.out.size(), false);
  add_range(r.out.size(), r.in.size(), true);
  bufs.push_back({GuestAddr{c->block.value + kStatusOffset}, 1, true});
  c->cb = std::move(r.cb);
  c->waiter = std::move(r.waiter);
  c->lease = std::move(r.lease);

  std::unique_lock lk(mu_);
  for (;;) {
    if (dead_) {
      Error e = *dead_;
      lk.unlock();
      give_back(c);
      return tl::unexpected(std::move(e));
    }
    const bool use_indirect = o_.indirect && bufs.size() > 2;
    auto head = ring_->add(bufs, use_indirect);
    if (head) {
      by_head_[*head] = c;
      ring_->publish();
      submitted_.fetch_add(1, std::memory_order_relaxed);
      if (ring_->needs_kick()) {
        kicks_.fetch_add(1, std::memory_order_relaxed);
        signal_fd(kick_.get());
      }
      return {};
    }
    if (head.error().code != Errc::kBusy || !may_wait) {
      lk.unlock();
      give_back(c);
      return fail(head.error().code, "queue {}: {}", o_.index, head.error().message);
    }
    cv_.wait(lk);  // a completion frees descriptors (reap, then finish notifies)
  }
}

}  // namespace iceblk::driver
