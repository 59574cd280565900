// io_uring IoQueue: one ring per queue worker, an eventfd registered for
// completions. Short reads/writes are resubmitted for the remainder; -EAGAIN and
// -EINTR are retried; fallocate modes the filesystem refuses fall back to the
// synchronous path (writes of zeros).
#include <liburing.h>
#include <linux/falloc.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <climits>
#include <memory>
#include <optional>
#include <vector>

#include "backend/file_io.h"
#include "base/log.h"

namespace iceblk::backend::detail {

namespace {

struct Op {
  IoRequest req;
  std::vector<iovec> rest;  // remaining iovecs (read/write)
  size_t first = 0;         // first unfinished entry of `rest`
  uint64_t done_bytes = 0;
  Op* next_pending = nullptr;  // PendingList link
};

// Ops waiting for an SQE, oldest first: an intrusive list (an Op waits at most once
// at a time), so queueing never allocates (a std::deque allocates a block every
// few dozen pushes in steady state).
class PendingList {
 public:
  [[nodiscard]] bool empty() const { return head_ == nullptr; }
  void push_back(Op* op) {
    op->next_pending = nullptr;
    (tail_ != nullptr ? tail_->next_pending : head_) = op;
    tail_ = op;
  }
  Op* pop_front() {
    Op* op = head_;
    head_ = op->next_pending;
    if (head_ == nullptr) tail_ = nullptr;
    op->next_pending = nullptr;
    return op;
  }

 private:
  Op* head_ = nullptr;
  Op* tail_ = nullptr;
};

class UringQueue final : public IoQueue {
 public:
  static Result<std::unique_ptr<IoQueue>> create(std::shared_ptr<FileShared> f, unsigned depth) {
    auto q = std::unique_ptr<UringQueue>(new UringQueue(std::move(f)));
    const unsigned entries = std::min(std::max(depth, 1u), 4096u);
    const int r = io_uring_queue_init(entries, &q->ring_, 0);
    if (r < 0) return fail(errno_error(Errc::kUnsupported, "io_uring_queue_init", -r));
    q->ring_ok_ = true;
    q->capacity_ = q->ring_.sq.ring_entries;
    q->efd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!q->efd_) return fail(errno_error(Errc::kIo, "eventfd", errno));
    const int e = io_uring_register_eventfd(&q->ring_, q->efd_.get());
    if (e < 0) return fail(errno_error(Errc::kUnsupported, "io_uring_register_eventfd", -e));
    q->preallocate(entries);
    return std::unique_ptr<IoQueue>(std::move(q));
  }

  ~UringQueue() override {
    if (ring_ok_) {
      drain();
      io_uring_queue_exit(&ring_);
    }
    for (Op* op : free_ops_) delete op;
  }

  void submit(IoRequest req) override {
    if (auto c = check_request(*f_, req); !c) {
      req.done(tl::unexpected(std::move(c).error()));
      return;
    }
    Op* op = take_op();
    // Copied into the pooled Op's own vector (its capacity is kept across requests):
    // short transfers advance this copy, never the caller's iovecs.
    if (req.op == IoOp::kRead || req.op == IoOp::kWrite) op->rest.assign(req.iov.begin(), req.iov.end());
    op->req = std::move(req);
    ++in_flight_;
    pending_.push_back(op);
  }

  void flush_submissions() override {
    while (!pending_.empty() && in_kernel_ < capacity_) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) break;
      Op* op = pending_.pop_front();
      prep(sqe, op);
      ++in_kernel_;
    }
    for (;;) {
      const int r = io_uring_submit(&ring_);
      if (r == -EINTR) continue;
      // -EAGAIN / -EBUSY: the kernel is short of resources or the CQ is full; the
      // SQEs stay queued and go out with the next submit after a reap.
      break;
    }
  }

  int completion_fd() const override { return efd_.get(); }

  size_t reap() override {
    // The member's capacity is reused; swapped out so a callback that reaps again
    // cannot disturb this loop.
    std::vector<std::pair<Op*, Result<uint64_t>>> finished;
    finished.swap(finished_buf_);
    finished.clear();
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
      Op* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      --in_kernel_;
      if (auto r = complete_one(op, res)) finished.emplace_back(op, std::move(*r));
    }
    if (!pending_.empty()) flush_submissions();
    for (auto& [op, result] : finished) {
      --in_flight_;
      auto done = std::move(op->req.done);
      give_op(op);  // before the callback: it may submit again
      done(std::move(result));
    }
    const size_t n = finished.size();
    finished.clear();
    if (finished.capacity() > finished_buf_.capacity()) finished_buf_.swap(finished);
    return n;
  }

  size_t in_flight() const override { return in_flight_; }

  void drain() override {
    while (in_flight_ > 0) {
      flush_submissions();
      if (reap() > 0) continue;
      if (in_kernel_ == 0) continue;  // everything pending; the next flush submits it
      io_uring_cqe* cqe = nullptr;
      const int r = io_uring_wait_cqe(&ring_, &cqe);
      if (r < 0 && r != -EINTR && r != -EAGAIN) {
        spdlog::error("{}: io_uring_wait_cqe: {}", f_->path, -r);
        return;
      }
    }
  }

 private:
  explicit UringQueue(std::shared_ptr<FileShared> f) : f_(std::move(f)) {}

  // Ops for `n` requests in flight (the queue's depth), made at set-up: a request
  // allocates no Op and, up to kPreallocIovecs segments, no iovec copy, even the first
  // time so many are in flight at once (under load that can come after any warm-up).
  static constexpr size_t kPreallocIovecs = 8;
  void preallocate(unsigned n) {
    free_ops_.reserve(n);
    finished_buf_.reserve(n);
    for (unsigned i = 0; i < n; ++i) {
      auto op = std::make_unique<Op>();
      op->rest.reserve(kPreallocIovecs);
      free_ops_.push_back(op.release());
    }
  }

  // Ops are reused: after warm-up a request allocates no Op and no iovec copy.
  Op* take_op() {
    if (free_ops_.empty()) return new Op();
    Op* op = free_ops_.back();
    free_ops_.pop_back();
    return op;
  }
  void give_op(Op* op) {
    op->req = IoRequest{};
    op->first = 0;
    op->done_bytes = 0;
    op->rest.clear();
    try {
      free_ops_.push_back(op);
    } catch (...) {
      delete op;
    }
  }

  void prep(io_uring_sqe* sqe, Op* op) {
    const int fd = f_->fd.get();
    const auto& req = op->req;
    const auto off = req.offset + op->done_bytes;
    switch (req.op) {
      case IoOp::kRead:
      case IoOp::kWrite: {
        const auto cnt = static_cast<unsigned>(std::min<size_t>(op->rest.size() - op->first, IOV_MAX));
        if (req.op == IoOp::kRead) {
          io_uring_prep_readv(sqe, fd, op->rest.data() + op->first, cnt, off);
        } else {
          io_uring_prep_writev(sqe, fd, op->rest.data() + op->first, cnt, off);
        }
        break;
      }
      case IoOp::kFlush:
        // ORDER: IO_DRAIN makes the flush start after every earlier submission has
        // completed, so it covers writes the driver saw complete before it.
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        sqe->flags |= IOSQE_IO_DRAIN;
        break;
      case IoOp::kDiscard:
      case IoOp::kWriteZeroes: {
        int mode = FALLOC_FL_KEEP_SIZE;
        mode |= (req.op == IoOp::kDiscard || req.unmap) && f_->punch_ok.load() ? FALLOC_FL_PUNCH_HOLE
                                                                              : FALLOC_FL_ZERO_RANGE;
        io_uring_prep_fallocate(sqe, fd, mode, static_cast<off_t>(req.offset), static_cast<off_t>(req.length));
        break;
      }
    }
    io_uring_sqe_set_data(sqe, op);
  }

  // Handles one CQE. Returns the final result, or nullopt if the op was requeued.
  std::optional<Result<uint64_t>> complete_one(Op* op, int res) {
    const auto& req = op->req;
    if (res == -EAGAIN || res == -EINTR) {
      pending_.push_back(op);
      return std::nullopt;
    }
    switch (req.op) {
      case IoOp::kRead:
      case IoOp::kWrite: {
        const bool write = req.op == IoOp::kWrite;
        if (res < 0) {
          return Result<uint64_t>(fail(errno_error(
              Errc::kIo, fmt::format("{} {} at {}", write ? "write" : "read", f_->path, req.offset), -res)));
        }
        if (res == 0 && op->first < op->rest.size()) {
          return Result<uint64_t>(fail(Errc::kIo, "{} {} at {}: unexpected end of file",
                                       write ? "write" : "read", f_->path, req.offset + op->done_bytes));
        }
        op->done_bytes += static_cast<uint64_t>(res);
        uint64_t n = static_cast<uint64_t>(res);
        while (n > 0 && op->first < op->rest.size()) {
          auto& v = op->rest[op->first];
          if (n >= v.iov_len) {
            n -= v.iov_len;
            ++op->first;
          } else {
            v.iov_base = static_cast<uint8_t*>(v.iov_base) + n;
            v.iov_len -= n;
            n = 0;
          }
        }
        while (op->first < op->rest.size() && op->rest[op->first].iov_len == 0) ++op->first;
        if (op->first < op->rest.size()) {  // short transfer: submit the rest
          pending_.push_back(op);
          return std::nullopt;
        }
        return Result<uint64_t>(op->done_bytes);
      }
      case IoOp::kFlush:
        if (res < 0) return Result<uint64_t>(fail(errno_error(Errc::kIo, fmt::format("fdatasync {}", f_->path), -res)));
        return Result<uint64_t>(uint64_t{0});
      case IoOp::kDiscard:
      case IoOp::kWriteZeroes:
        if (res < 0) {
          if (!is_unsupported_errno(-res)) {
            return Result<uint64_t>(fail(errno_error(Errc::kIo, fmt::format("fallocate {}", f_->path), -res)));
          }
          // The filesystem refused the mode: take the synchronous path, which
          // records the refusal and falls back to writes of zeros.
          return run_sync(*f_, req);
        }
        return Result<uint64_t>(req.length);
    }
    return Result<uint64_t>(fail(Errc::kInvalidArgument, "unknown I/O op"));
  }

  std::shared_ptr<FileShared> f_;
  io_uring ring_{};
  bool ring_ok_ = false;
  unsigned capacity_ = 0;
  unsigned in_kernel_ = 0;
  size_t in_flight_ = 0;
  UniqueFd efd_;
  PendingList pending_;
  std::vector<Op*> free_ops_;  // owned
  std::vector<std::pair<Op*, Result<uint64_t>>> finished_buf_;
};

}  // namespace

Result<std::unique_ptr<IoQueue>> make_uring_queue(std::shared_ptr<FileShared> f, unsigned depth) {
  return UringQueue::create(std::move(f), depth);
}

Status probe_uring() {
  io_uring ring{};
  const int r = io_uring_queue_init(2, &ring, 0);
  if (r < 0) return fail(errno_error(Errc::kUnsupported, "io_uring_queue_init", -r));
  io_uring_queue_exit(&ring);
  return {};
}

}  // namespace iceblk::backend::detail
