#include "blk/queue_processor.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "base/log.h"
#include "base/monotonic_clock.h"
#include "blk/device.h"
#include "blk/wire.h"

namespace iceblk::blk {

struct QueueProcessor::InFlight {
  Request req;
  std::shared_ptr<const memory::GuestMemory> mem;  // keeps the request's host pointers alive
  uint8_t* bounce = nullptr;  // from pool_, held for every chunk of the request
  bool small_bounce = false;  // which class of pool_ it came from
  uint64_t chunk_off = 0;     // encrypted: bytes of the request finished
  uint64_t chunk_len = 0;     // encrypted: bytes of the chunk in flight
  unsigned outstanding = 0;
  std::optional<Error> error;
  bool flushed = false;   // writethrough flush issued
  uint64_t start_ns = 0;  // when the chain was popped (latency statistics)

  void clear() {
    req.reset();
    mem.reset();
    bounce = nullptr;
    small_bounce = false;
    chunk_off = chunk_len = 0;
    outstanding = 0;
    error.reset();
    flushed = false;
  }
};

QueueProcessor::QueueProcessor(BlkDevice& dev, uint16_t index, std::unique_ptr<backend::IoQueue> io,
                               BouncePool pool, std::shared_ptr<BufferBudget> budget,
                               uint64_t reserved)
    : dev_(dev),
      env_(dev.parse_env()),
      engine_(dev.config().engine.get()),
      index_(index),
      stats_(&dev.queue_stats(index)),
      crypt_pool_(dev.config().crypt_pool.get()),
      pool_(std::move(pool)),
      budget_(std::move(budget)),
      reserved_(reserved),
      io_(std::move(io)) {
  const size_t n = dev.config().queue_size;
  states_ = std::make_unique<InFlight[]>(n);
  free_.reserve(n);
  for (size_t i = n; i-- > 0;) free_.push_back(&states_[i]);
  ready_.reserve(n);
  batch_.reserve(n);
  chain_.readable.reserve(n);
  chain_.writable.reserve(n);
  small_waiters_.slots.resize(n);
  large_waiters_.slots.resize(n);
}

QueueProcessor::~QueueProcessor() {
  if (io_) {
    io_->drain();  // callbacks only touch our own state, which is still alive
    io_.reset();
  }
  if (budget_) budget_->release(reserved_);
}

int QueueProcessor::completion_fd() const {
  return hold_ ? hold_->event_fd() : io_->completion_fd();
}

QueueProcessor::InFlight* QueueProcessor::acquire() {
  if (free_.empty()) return nullptr;
  ++in_flight_;
  InFlight* f = free_.back();
  free_.pop_back();
  return f;
}

void QueueProcessor::release(InFlight* f) {
  --in_flight_;
  if (f->bounce) pool_.give(f->bounce, f->small_bounce);
  f->clear();
  free_.push_back(f);
}

void QueueProcessor::start_crypt(InFlight* f, virtio::SplitQueue& q) {
  // FIFO per buffer class: a request arriving while others wait queues behind them.
  WaitQueue& waiters = pool_.uses_small(f->req.length) ? small_waiters_ : large_waiters_;
  if (waiters.count == 0) f->bounce = pool_.take(f->req.length, f->small_bounce);
  if (f->bounce == nullptr) {
    // The cap is reached: wait for a buffer (never allocate one).
    ++buffer_waits_;
    waiters.push(f);
    return;
  }
  if (!submit_crypt_chunk(f)) {
    ICEBLK_GUEST_ERROR("queue {}: request {}: {}", index_, f->req.head, f->error->to_string());
    finish(f, q, status_for(*f->error), 1);
  }
}

void QueueProcessor::resume_waiters(virtio::SplitQueue& q) {
  for (WaitQueue* w : {&small_waiters_, &large_waiters_}) {
    while (w->count > 0) {
      InFlight* f = w->slots[w->head];
      f->bounce = pool_.take(f->req.length, f->small_bounce);
      if (f->bounce == nullptr) break;
      (void)w->pop();
      if (!submit_crypt_chunk(f)) {
        ICEBLK_GUEST_ERROR("queue {}: request {}: {}", index_, f->req.head, f->error->to_string());
        finish(f, q, status_for(*f->error), 1);
      }
    }
  }
}

void QueueProcessor::complete(virtio::SplitQueue& q, uint16_t head, uint32_t used_len) {
  if (hold_ && hold_->hold(head, used_len)) return;  // TESTING ONLY: pushed later, out of order
  if (auto s = q.push_used(head, used_len); !s) {
    if (!ring_error_) ring_error_ = std::move(s).error();
    return;
  }
  ++pushed_;
  if (hold_) hold_->pushed();
}

void QueueProcessor::release_held(virtio::SplitQueue& q, bool all) {
  if (!hold_) return;
  hold_->release(
      [&](uint16_t head, uint32_t used_len) {
        if (auto s = q.push_used(head, used_len); !s) {
          if (!ring_error_) ring_error_ = std::move(s).error();
          return;
        }
        ++pushed_;
      },
      all);
}

void QueueProcessor::finish(InFlight* f, virtio::SplitQueue& q, uint8_t status, uint32_t used_len) {
  // TRUST: poisoned memory (memory/fault_guard.h: the front-end shrank it) read or
  // received zeros where its bytes were: the request did not do what was asked.
  if (status == kStatusOk && (q.poisoned() || (f->mem && f->mem->poisoned())))
    status = kStatusIoErr;
  // ORDER: the status byte is stored before push_used's release of used->idx.
  std::memcpy(f->req.status, &status, 1);
  complete(q, f->req.head, used_len);
  const Request& r = f->req;
  const bool data = r.kind == RequestKind::kIn || r.kind == RequestKind::kOut;
  stats_->record(static_cast<size_t>(r.kind), data ? r.length : 0, status,
                 monotonic_ns() - f->start_ns, r.encrypted(), r.kind == RequestKind::kOut);
  release(f);
}

void QueueProcessor::submit(InFlight* f, backend::IoRequest req) {
  ++f->outstanding;
  // TRUST: nothing read from poisoned guest memory (zeros where the front-end cut its
  // file, memory/fault_guard.h) reaches the backend: an encrypted write was encrypted
  // into our buffer before this check, a plain one is handed to the backend after it.
  if (f->mem && f->mem->poisoned()) {
    if (!f->error) f->error = Error(Errc::kIo, "guest memory poisoned (the front-end shrank it)");
    if (--f->outstanding == 0) ready_.push_back(f);
    return;
  }
  req.done = [this, f](Result<uint64_t> r) {
    if (!r && !f->error) f->error = std::move(r).error();
    if (--f->outstanding == 0) ready_.push_back(f);
  };
  io_->submit(std::move(req));
}

Status QueueProcessor::crypt_chunk(const Request& r, ice::Direction dir, uint64_t off,
                                   std::span<const iovec> src, uint64_t src_off,
                                   std::span<const iovec> dst, uint64_t dst_off, uint64_t len) {
  if (crypt_pool_ != nullptr) {
    return crypt_pool_->crypt(crypt_, *r.key, dir, r.dun_at(off), src, src_off, dst, dst_off, len);
  }
  return crypt_.crypt(*r.key, dir, r.dun_at(off), src, src_off, dst, dst_off, len);
}

bool QueueProcessor::submit_crypt_chunk(InFlight* f) {
  const Request& r = f->req;
  const uint64_t len = std::min<uint64_t>(kCryptChunk, r.length - f->chunk_off);
  f->chunk_len = len;  // the buffer (start_crypt) serves every chunk of the request
  backend::IoRequest io;
  io.offset = r.offset + f->chunk_off;
  io.length = len;
  io.iov = {{f->bounce, len}};
  if (r.kind == RequestKind::kOut) {
    // TRUST: one pass, encrypting straight out of the driver's buffers into our
    // private buffer (the cipher is the copy); the driver's buffer is only read,
    // each byte once.
    const iovec dst{f->bounce, len};
    if (auto s = crypt_chunk(r, ice::Direction::kEncrypt, f->chunk_off, r.data, f->chunk_off,
                             {&dst, 1}, 0, len);
        !s) {
      f->error = std::move(s).error();
      return false;
    }
    io.op = backend::IoOp::kWrite;
  } else {
    io.op = backend::IoOp::kRead;
  }
  submit(f, std::move(io));
  return true;
}

void QueueProcessor::start(InFlight* f, virtio::SplitQueue& q) {
  Request& r = f->req;
  switch (r.kind) {
    case RequestKind::kIn:
    case RequestKind::kOut:
      if (r.length == 0) return finish(f, q, kStatusOk, 1);
      if (r.encrypted()) return start_crypt(f, q);
      return submit(f, backend::IoRequest{r.kind == RequestKind::kIn ? backend::IoOp::kRead
                                                                     : backend::IoOp::kWrite,
                                          r.offset,
                                          r.length,
                                          r.data,
                                          false,
                                          {}});
    case RequestKind::kFlush:
      return submit(f, backend::IoRequest{backend::IoOp::kFlush, 0, 0, {}, false, {}});
    case RequestKind::kGetId: {
      std::array<uint8_t, kIdBytes> id{};
      const auto& serial = dev_.config().serial;
      std::memcpy(id.data(), serial.data(), std::min<size_t>(serial.size(), id.size()));
      memory::copy_to_iovecs(r.data, std::span<const uint8_t>(id.data(), r.length));
      return finish(f, q, kStatusOk, static_cast<uint32_t>(r.length + 1));
    }
    case RequestKind::kDiscard:
    case RequestKind::kWriteZeroes: {
      const auto op =
          r.kind == RequestKind::kDiscard ? backend::IoOp::kDiscard : backend::IoOp::kWriteZeroes;
      // Count every segment first so a synchronous completion cannot finish the
      // request while later segments are still being submitted.
      ++f->outstanding;
      for (const auto& range : r.ranges) {
        if (range.length == 0) continue;
        submit(f, backend::IoRequest{op, range.offset, range.length, {}, range.unmap, {}});
      }
      if (--f->outstanding == 0) ready_.push_back(f);
      return;
    }
    case RequestKind::kGetCryptoCaps: {
      std::vector<uint8_t> caps = encode_capabilities(*env_.caps);
      memory::copy_to_iovecs(r.data, caps);
      return finish(f, q, kStatusOk, static_cast<uint32_t>(r.length + 1));
    }
    case RequestKind::kProgramKey: {
      auto s = engine_->program(r.slot, std::move(*r.new_key));
      r.new_key.reset();
      if (!s) {
        ICEBLK_GUEST_ERROR("queue {}: PROGRAM_KEY: {}", index_, s.error().to_string());
        return finish(f, q, status_for(s.error()), 1);
      }
      return finish(f, q, kStatusOk, 1);
    }
    case RequestKind::kEvictKey: {
      auto s = engine_->evict(r.slot);
      return finish(f, q, s ? kStatusOk : status_for(s.error()), 1);
    }
  }
}

void QueueProcessor::advance(InFlight* f, virtio::SplitQueue& q) {
  Request& r = f->req;
  if (f->error) {
    ICEBLK_GUEST_ERROR("queue {}: request {} failed: {}", index_, r.head, f->error->to_string());
    return finish(f, q, status_for(*f->error), 1);
  }
  if (r.encrypted()) {
    if (r.kind == RequestKind::kIn) {
      // TRUST: decrypted out of place, from our buffer straight into the driver's:
      // its buffer receives only the final plaintext, never ciphertext.
      const iovec src{f->bounce, f->chunk_len};
      if (auto s = crypt_chunk(r, ice::Direction::kDecrypt, f->chunk_off, {&src, 1}, 0, r.data,
                               f->chunk_off, f->chunk_len);
          !s) {
        ICEBLK_GUEST_ERROR("queue {}: decrypt: {}", index_, s.error().to_string());
        return finish(f, q, status_for(s.error()), 1);
      }
    }
    f->chunk_off += f->chunk_len;
    if (f->chunk_off < r.length) {
      if (!submit_crypt_chunk(f)) return finish(f, q, status_for(*f->error), 1);
      return;
    }
  }
  if (r.kind == RequestKind::kOut && !f->flushed && !dev_.writeback()) {
    f->flushed = true;  // writethrough: make the write stable before completing
    return submit(f, backend::IoRequest{backend::IoOp::kFlush, 0, 0, {}, false, {}});
  }
  const uint32_t used = r.kind == RequestKind::kIn ? static_cast<uint32_t>(r.length + 1) : 1;
  finish(f, q, kStatusOk, used);
}

void QueueProcessor::handle_ready(virtio::SplitQueue& q) {
  for (;;) {
    while (!ready_.empty()) {
      batch_.swap(ready_);
      for (InFlight* f : batch_) advance(f, q);
      batch_.clear();
    }
    // Finished requests gave their buffers back: start the requests waiting for one
    // (a synchronous backend completes them at once, hence the loop).
    resume_waiters(q);
    if (ready_.empty()) break;
  }
}

void QueueProcessor::handle_chain(const virtio::DescriptorChain& chain, virtio::SplitQueue& q) {
  const memory::GuestMemory& mem = q.memory();
  auto status = locate_status(chain, mem);
  if (!status) {
    ICEBLK_GUEST_ERROR("queue {}: chain {}: {}", index_, chain.head, status.error().to_string());
    stats_->record(kStatInvalid, 0, 0xff, 0, false, false);
    return complete(q, chain.head, 0);
  }
  InFlight* f = acquire();  // process() pops only while a state is free
  f->start_ns = monotonic_ns();
  // Parsed into the state's own Request: its iovec vector keeps its capacity.
  if (auto st = parse_request_into(f->req, chain, mem, env_, *status); !st) {
    const uint8_t code = status_for(st.error());
    ICEBLK_GUEST_ERROR("queue {}: request {}: {}", index_, chain.head, st.error().to_string());
    std::memcpy(*status, &code, 1);
    stats_->record(kStatInvalid, 0, code, 0, false, false);
    release(f);
    return complete(q, chain.head, 1);
  }
  f->mem = q.memory_ptr();
  start(f, q);
}

Result<bool> QueueProcessor::take_chain(virtio::SplitQueue& q) {
  // Walked into our own chain_ (its capacity is kept): no allocation per request.
  ICEBLK_ASSIGN_OR_RETURN(const auto popped, q.pop_into(chain_, bad_chain_));
  switch (popped) {
    case virtio::SplitQueue::Popped::kEmpty: return false;
    case virtio::SplitQueue::Popped::kBad:
      ICEBLK_GUEST_ERROR("queue {}: bad chain {}: {}", index_, chain_.head, bad_chain_->to_string());
      stats_->record(kStatInvalid, 0, 0xff, 0, false, false);
      complete(q, chain_.head, 0);
      return true;
    case virtio::SplitQueue::Popped::kChain: break;
  }
  handle_chain(chain_, q);
  return true;
}

Result<bool> QueueProcessor::process(virtio::SplitQueue& q) {
  if (const int fd = io_->completion_fd(); fd >= 0) {
    uint64_t v;
    (void)!::read(fd, &v, sizeof v);  // non-blocking eventfd: clear before reaping
  }
  io_->reap();
  handle_ready(q);
  for (;;) {
    // With all queue_size request states in use, chains wait in the ring; a
    // completion (completion_fd) brings us back.
    for (;;) {
      if (free_.empty()) break;
      ICEBLK_ASSIGN_OR_RETURN(const bool took, take_chain(q));
      if (!took) break;
      // Poisoned: the worker stops the queue after this pass; pop nothing more.
      if (ring_error_ || q.poisoned()) break;
    }
    io_->flush_submissions();
    io_->reap();
    handle_ready(q);
    io_->flush_submissions();
    if (ring_error_ || free_.empty() || q.poisoned()) break;
    // EVENT_IDX: publish avail_event, then re-check so a chain added meanwhile is
    // not left waiting for a kick that will not come.
    q.enable_notifications();
    ICEBLK_ASSIGN_OR_RETURN(const bool took, take_chain(q));
    if (!took) break;
  }
  release_held(q, false);
  if (ring_error_) {
    Error e = std::move(*ring_error_);
    ring_error_.reset();
    return tl::unexpected(std::move(e));
  }
  const bool notify = pushed_ > 0 && q.should_notify();
  pushed_ = 0;
  return notify;
}

void QueueProcessor::drain(virtio::SplitQueue& q) {
  while (in_flight_ > 0) {
    io_->flush_submissions();
    io_->drain();
    if (ready_.empty() && io_->in_flight() == 0 && in_flight_ > 0) {
      spdlog::error("queue {}: {} requests lost in the backend", index_, in_flight_);
      break;
    }
    handle_ready(q);
  }
  release_held(q, true);
}

}  // namespace iceblk::blk
