// Ceph RBD backend through librbd's C API (aio). One cluster connection and one
// open image per backend, shared by its queues (librbd's image handle is thread
// safe). librbd runs completion callbacks on its own threads: they only move the
// finished operation onto a mutex-protected list and signal the queue's
// CompletionFd; IoRequest::done runs from reap() on the queue's thread.
//
// Data goes through staging memory of the queue's own (rbd_aio_readv/writev on
// kStageChunk pieces of one kStageBytes mapping; writes are copied in at
// submission, reads copied out at completion), never through guest memory. That
// is what lets a deadline or drain() give up on a cluster that does not answer:
// the request fails, and librbd may still complete the operation later into
// memory that is still ours (guest memory may be gone by then). The staging
// memory and the operation slots belong to the queue's Mailbox, which outlives
// the queue while librbd holds any of them. Steady state allocates nothing in
// this file: operations are slots, staging is preallocated, lists have their
// capacity (librbd allocates inside its calls, e.g. for each completion; that is
// librbd's). A request larger than all of the staging memory gets a buffer of
// its own.
//
// Storage going away: librbd retries by itself (StorageErrorPolicy::kRetry).
// With kFail, a request older than io_timeout fails with IOERR on the queue's
// own timer; librbd's rados_osd_op_timeout (kOsdTimeoutFactor * io_timeout)
// only bounds how long it keeps the abandoned operation. Closing the image
// (export removed, daemon stopping) runs on a thread of its own and is
// abandoned after io_timeout when the cluster does not answer.
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/completion_fd.h"
#include "backend/image_spec.h"
#include "base/log.h"

namespace iceblk::backend {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kStageChunk = 32 * 1024;          // bytes per staging piece
constexpr uint64_t kStageBytes = uint64_t{8} << 20;  // staging memory per queue
constexpr size_t kStageChunks = kStageBytes / kStageChunk;
// kFail: librbd gives up on an operation after this * io_timeout.
constexpr int kOsdTimeoutFactor = 4;

std::string rados_err(int r) {
  return std::strerror(r < 0 ? -r : r);
}

// rbd_close and rados_shutdown wait for the cluster (flush, lock release, and
// any operation still in flight). They run on a thread of their own; after
// `limit` the connection is abandoned to it, with a warning.
void close_bounded(rados_t cluster, rados_ioctx_t io, rbd_image_t image, const std::string& name,
                   std::chrono::milliseconds limit) {
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  auto st = std::make_shared<State>();
  std::thread([st, cluster, io, image] {
    if (image != nullptr) rbd_close(image);
    if (io != nullptr) rados_ioctx_destroy(io);
    if (cluster != nullptr) rados_shutdown(cluster);
    std::lock_guard lk(st->mu);
    st->done = true;
    st->cv.notify_all();
  }).detach();
  std::unique_lock lk(st->mu);
  if (!st->cv.wait_for(lk, limit, [&] { return st->done; })) {
    spdlog::warn(
        "{}: the cluster did not answer within {} ms while closing; the image and "
        "cluster connection are abandoned (rbd_close/rados_shutdown left running)",
        name, limit.count());
  }
}

struct RbdImage {
  ImageSpec spec;
  RemoteOptions opts;
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  rbd_image_t image = nullptr;
  uint64_t size = 0;
  bool read_only = false;

  RbdImage() = default;
  RbdImage(const RbdImage&) = delete;
  RbdImage& operator=(const RbdImage&) = delete;
  ~RbdImage() {
    if (cluster != nullptr) close_bounded(cluster, io, image, spec.text, opts.io_timeout);
  }
};

struct Mailbox;

struct RbdOp {
  enum class State { kFree, kWaiting, kInLibrbd };
  IoRequest req;
  uint64_t len = 0;
  Clock::time_point deadline;
  State state = State::kFree;
  bool abandoned = false;          // failed already; recycled once librbd is done with it
  std::vector<iovec> stage;        // its staging pieces (or its own buffer)
  std::unique_ptr<uint8_t[]> own;  // a request larger than all of the staging memory
  rbd_completion_t comp = nullptr;
  std::shared_ptr<Mailbox> box;  // set while librbd holds it
  ssize_t ret = 0;
};

// What a queue shares with librbd's callback threads. Outlives the queue while
// librbd still holds operations (their slots and staging memory are here).
struct Mailbox {
  std::mutex mu;
  std::vector<RbdOp*> done;  // finished, for reap(); capacity: every op
  bool orphaned = false;     // the queue is gone: callbacks release their ops
  CompletionFd cfd;
  uint8_t* stage = nullptr;                 // kStageBytes, mmap (pages touched on use)
  std::vector<std::unique_ptr<RbdOp>> ops;  // every slot

  explicit Mailbox(CompletionFd c) : cfd(std::move(c)) {}
  ~Mailbox() {
    for (auto& op : ops)
      if (op->comp != nullptr) rbd_aio_release(op->comp);
    if (stage != nullptr) ::munmap(stage, kStageBytes);
  }
};

// librbd's thread.
void on_complete(rbd_completion_t c, void* arg) {
  auto* op = static_cast<RbdOp*>(arg);
  op->ret = rbd_aio_get_return_value(c);
  std::shared_ptr<Mailbox> box = std::move(op->box);  // (op may be reused once listed)
  bool orphaned = false;
  {
    std::lock_guard lk(box->mu);
    orphaned = box->orphaned;
    if (!orphaned) box->done.push_back(op);
  }
  if (orphaned) {
    // Releasing the completion from inside its callback is allowed (QEMU does it).
    rbd_aio_release(c);
    op->comp = nullptr;
    return;  // (the last operation out frees the mailbox)
  }
  box->cfd.signal();
}

// Copies between two iovec lists (the shorter one's total).
void copy_iov(std::span<const iovec> dst, std::span<const iovec> src) {
  size_t di = 0, si = 0, doff = 0, soff = 0;
  while (di < dst.size() && si < src.size()) {
    const size_t n = std::min(dst[di].iov_len - doff, src[si].iov_len - soff);
    std::memcpy(static_cast<uint8_t*>(dst[di].iov_base) + doff,
                static_cast<const uint8_t*>(src[si].iov_base) + soff, n);
    doff += n;
    soff += n;
    if (doff == dst[di].iov_len) ++di, doff = 0;
    if (soff == src[si].iov_len) ++si, soff = 0;
  }
}

class RbdQueue final : public IoQueue {
 public:
  static Result<std::unique_ptr<IoQueue>> create(std::shared_ptr<RbdImage> img, unsigned depth) {
    ICEBLK_ASSIGN_OR_RETURN(auto cfd, CompletionFd::create("rbd queue"));
    auto box = std::make_shared<Mailbox>(std::move(cfd));
    void* m =
        ::mmap(nullptr, kStageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      return fail(
          errno_error(Errc::kBusy, fmt::format("rbd queue: mmap of {} bytes", kStageBytes), errno));
    }
    box->stage = static_cast<uint8_t*>(m);
    return std::unique_ptr<IoQueue>(
        new RbdQueue(std::move(img), std::move(box), std::max(depth, 1u)));
  }

  ~RbdQueue() override {
    drain();
    std::vector<RbdOp*> late;
    {
      std::lock_guard lk(box_->mu);
      box_->orphaned = true;
      late.swap(box_->done);
    }
    // Finished between drain() and now: librbd is done with them.
    for (RbdOp* op : late) {
      rbd_aio_release(op->comp);
      op->comp = nullptr;
    }
  }

  void submit(IoRequest req) override {
    auto len = check_io_request(req, img_->size, img_->read_only, img_->spec.text);
    if (!len) {
      req.done(tl::unexpected(std::move(len).error()));
      return;
    }
    if ((req.op == IoOp::kRead || req.op == IoOp::kWrite) && *len == 0) {
      req.done(uint64_t{0});  // nothing to move
      return;
    }
    RbdOp* op = take_op();
    op->req = std::move(req);
    op->len = *len;
    op->deadline = Clock::now() + img_->opts.io_timeout;
    ++in_flight_;
    if (needs_stage(*op) && (!waiting_.empty() || !take_stage(*op))) {
      op->state = RbdOp::State::kWaiting;
      waiting_.push_back(op);
    } else {
      launch(op);
    }
    update_timer();
  }

  int completion_fd() const override { return box_->cfd.fd(); }

  size_t reap() override {
    const bool ticked = box_->cfd.wait(0);
    {
      std::lock_guard lk(box_->mu);
      batch_.swap(box_->done);  // (both keep their capacity)
    }
    size_t n = 0;
    for (RbdOp* op : batch_) n += complete(op);
    batch_.clear();
    if (ticked && img_->opts.on_error == StorageErrorPolicy::kFail) n += expire(Clock::now());
    start_waiting();
    update_timer();
    return n;
  }

  size_t in_flight() const override { return in_flight_; }

  void drain() override {
    const auto limit = Clock::now() + img_->opts.io_timeout;
    while (in_flight_ > 0) {
      if (reap() > 0) continue;
      if (Clock::now() >= limit) {
        spdlog::error("{}: storage not answering; failing {} request(s) still in flight",
                      img_->spec.text, in_flight_);
        fail_all(Clock::time_point::max(), "storage not answering");
        return;
      }
      box_->cfd.wait(static_cast<int>(CompletionFd::kTick.count()));
    }
  }

 private:
  RbdQueue(std::shared_ptr<RbdImage> img, std::shared_ptr<Mailbox> box, unsigned depth)
      : img_(std::move(img)), box_(std::move(box)) {
    box_->ops.reserve(depth);
    for (unsigned i = 0; i < depth; ++i) box_->ops.push_back(std::make_unique<RbdOp>());
    box_->done.reserve(depth);
    batch_.reserve(depth);
    for (auto* v : {&free_, &waiting_, &expired_, &starting_}) v->reserve(depth);
    for (auto& op : box_->ops) {
      op->stage.reserve(8);
      free_.push_back(op.get());
    }
    free_chunks_.reserve(kStageChunks);
    for (size_t i = kStageChunks; i-- > 0;) free_chunks_.push_back(box_->stage + i * kStageChunk);
  }

  // A free slot; a new one when librbd still holds all of them (abandoned
  // operations of a cluster that does not answer).
  RbdOp* take_op() {
    if (free_.empty()) {
      std::lock_guard lk(box_->mu);  // (callbacks push to done)
      box_->ops.push_back(std::make_unique<RbdOp>());
      const size_t n = box_->ops.size();
      box_->done.reserve(n);
      for (auto* v : {&batch_, &free_, &waiting_, &expired_, &starting_}) v->reserve(n);
      return box_->ops.back().get();
    }
    RbdOp* op = free_.back();
    free_.pop_back();
    return op;
  }

  static bool needs_stage(const RbdOp& op) {
    return op.req.op == IoOp::kRead || op.req.op == IoOp::kWrite;
  }

  // Staging for the whole request, or false when not enough is free now.
  bool take_stage(RbdOp& op) {
    const size_t need = (op.len + kStageChunk - 1) / kStageChunk;
    if (need > kStageChunks) {  // larger than all of it: a buffer of its own
      op.own.reset(new uint8_t[op.len]);
      op.stage.push_back({op.own.get(), op.len});
      return true;
    }
    if (free_chunks_.size() < need) return false;
    uint64_t left = op.len;
    for (size_t i = 0; i < need; ++i) {
      op.stage.push_back({free_chunks_.back(), std::min(left, kStageChunk)});
      free_chunks_.pop_back();
      left -= op.stage.back().iov_len;
    }
    return true;
  }

  void give_stage(RbdOp& op) {
    if (op.own) {
      op.own.reset();
    } else {
      for (const iovec& v : op.stage) free_chunks_.push_back(static_cast<uint8_t*>(v.iov_base));
    }
    op.stage.clear();
  }

  void recycle(RbdOp* op) {
    give_stage(*op);
    if (op->comp != nullptr) rbd_aio_release(op->comp);
    op->comp = nullptr;
    op->req = IoRequest{};
    op->abandoned = false;
    op->state = RbdOp::State::kFree;
    free_.push_back(op);
  }

  std::string what(const RbdOp& op) const {
    return fmt::format("{} {} at {}", op_name(op.req.op), img_->spec.text, op.req.offset);
  }

  static const char* op_name(IoOp op) {
    static constexpr const char* kNames[] = {"read", "write", "flush", "discard", "write-zeroes"};
    return kNames[static_cast<int>(op)];
  }

  // Hands the operation to librbd, or fails its request.
  void launch(RbdOp* op) {
    int r = rbd_aio_create_completion(op, on_complete, &op->comp);
    if (r == 0) {
      op->state = RbdOp::State::kInLibrbd;
      op->box = box_;
      r = start(*op);
      if (r < 0) op->box.reset();
    }
    if (r < 0) {
      auto result = Result<uint64_t>(fail(errno_error(Errc::kIo, what(*op), -r)));
      IoRequest failed = std::move(op->req);
      recycle(op);
      --in_flight_;
      failed.done(std::move(result));
    }
  }

  int start(RbdOp& op) {
    const IoRequest& req = op.req;
    rbd_image_t im = img_->image;
    const int n = static_cast<int>(op.stage.size());
    switch (req.op) {
      case IoOp::kRead:
        return rbd_aio_readv(im, op.stage.data(), n, req.offset, op.comp);
      case IoOp::kWrite:
        copy_iov(op.stage, std::span<const iovec>(req.iov.data(), req.iov.size()));
        return rbd_aio_writev(im, op.stage.data(), n, req.offset, op.comp);
      case IoOp::kFlush:
        return rbd_aio_flush(im, op.comp);
      case IoOp::kDiscard:
        return rbd_aio_discard(im, req.offset, req.length, op.comp);
      case IoOp::kWriteZeroes:
        // librbd may deallocate either way; the data reads back as zeros.
        return rbd_aio_write_zeroes(im, req.offset, req.length, op.comp, 0, 0);
    }
    return -EINVAL;
  }

  // librbd finished `op`: its request completes (unless it was failed already).
  size_t complete(RbdOp* op) {
    if (op->abandoned) {
      recycle(op);
      return 0;
    }
    Result<uint64_t> result = finish(*op);  // (copies a read into req.iov)
    IoRequest req = std::move(op->req);
    recycle(op);
    --in_flight_;
    req.done(std::move(result));
    return 1;
  }

  Result<uint64_t> finish(RbdOp& op) {
    if (op.ret < 0) {
      if (op.ret == -ETIMEDOUT) {
        return fail(Errc::kIo, "{}: storage did not answer within {} ms", what(op),
                    img_->opts.io_timeout.count());
      }
      return fail(errno_error(Errc::kIo, what(op), static_cast<int>(-op.ret)));
    }
    if (op.req.op == IoOp::kRead) {
      if (static_cast<uint64_t>(op.ret) != op.len) {
        return fail(Errc::kIo, "{}: short read ({} of {} bytes)", what(op), op.ret, op.len);
      }
      copy_iov(std::span<const iovec>(op.req.iov.data(), op.req.iov.size()), op.stage);
    }
    return op.len;
  }

  // Staging came free: start the waiting requests, oldest first.
  void start_waiting() {
    size_t started = 0;
    while (started < waiting_.size() && take_stage(*waiting_[started])) ++started;
    // (launch() may complete a request, whose done() may submit: take them out first.)
    starting_.assign(waiting_.begin(), waiting_.begin() + static_cast<long>(started));
    waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<long>(started));
    for (RbdOp* op : starting_) launch(op);
    starting_.clear();
  }

  // Fails every request whose deadline is at or before `now` (all of them for
  // Clock::time_point::max()). Those librbd holds stay with it (abandoned: they
  // own their staging) until it finishes them.
  size_t fail_all(Clock::time_point now, std::string_view why) {
    // (done() may submit: collect first.)
    expired_.clear();
    for (auto& slot : box_->ops) {
      RbdOp* op = slot.get();
      if (op->state == RbdOp::State::kInLibrbd && !op->abandoned && op->deadline <= now) {
        op->abandoned = true;
        expired_.push_back(op);
      }
    }
    size_t kept = 0;
    for (RbdOp* op : waiting_) {
      if (op->deadline <= now) {
        expired_.push_back(op);
      } else {
        waiting_[kept++] = op;
      }
    }
    waiting_.resize(kept);
    std::vector<RbdOp*> batch;
    batch.swap(expired_);
    for (RbdOp* op : batch) {
      IoRequest req = std::move(op->req);
      if (op->state != RbdOp::State::kInLibrbd) recycle(op);  // (waiting: nothing in librbd)
      --in_flight_;
      req.done(fail(Errc::kIo, "{} {}: {}", op_name(req.op), img_->spec.text, why));
    }
    const size_t n = batch.size();
    batch.clear();
    expired_.swap(batch);  // (keeps the capacity)
    return n;
  }

  size_t expire(Clock::time_point now) {
    const size_t n = fail_all(
        now, fmt::format("storage did not answer within {} ms", img_->opts.io_timeout.count()));
    if (n > 0) {
      spdlog::warn("{}: {} request(s) failed after --io-timeout {} ms", img_->spec.text, n,
                   img_->opts.io_timeout.count());
    }
    return n;
  }

  // kFail: the timer ticks while requests are outstanding.
  void update_timer() {
    box_->cfd.set_ticking(img_->opts.on_error == StorageErrorPolicy::kFail && in_flight_ > 0);
  }

  std::shared_ptr<RbdImage> img_;
  std::shared_ptr<Mailbox> box_;
  size_t in_flight_ = 0;               // requests submitted and not yet completed
  std::vector<RbdOp*> free_;           // free slots
  std::vector<RbdOp*> waiting_;        // for staging, oldest first
  std::vector<RbdOp*> batch_;          // reap()'s share of box_->done
  std::vector<RbdOp*> expired_;        // fail_all()'s scratch
  std::vector<RbdOp*> starting_;       // start_waiting()'s scratch
  std::vector<uint8_t*> free_chunks_;  // free staging pieces
};

class RbdBackend final : public BlockBackend {
 public:
  explicit RbdBackend(std::shared_ptr<RbdImage> img) : img_(std::move(img)) {}
  uint64_t size_bytes() const override { return img_->size; }
  bool read_only() const override { return img_->read_only; }
  bool supports_discard() const override { return !img_->read_only; }
  std::string describe() const override { return fmt::format("rbd {}", img_->spec.text); }
  Result<std::unique_ptr<IoQueue>> make_queue(unsigned depth) override {
    return RbdQueue::create(img_, depth);
  }

 private:
  std::shared_ptr<RbdImage> img_;
};

// Ceph's "secs" options take whole seconds (rounded up, at least 1).
std::string seconds(std::chrono::milliseconds ms) {
  return std::to_string(std::max<long long>(1, (ms.count() + 999) / 1000));
}

}  // namespace

Result<std::unique_ptr<BlockBackend>> open_rbd_backend(const ImageSpec& spec,
                                                       const RemoteOptions& opts) {
  const RbdSpec& rs = spec.rbd;
  auto img = std::make_shared<RbdImage>();
  img->spec = spec;
  img->opts = opts;
  const std::string name = "client." + (rs.id.empty() ? std::string("admin") : rs.id);
  auto err = [&](std::string_view what, int r) {
    return fail(Errc::kIo, "image {}: {}: {}", spec.text, what, rados_err(r));
  };
  if (int r = rados_create2(&img->cluster, "ceph", name.c_str(), 0); r < 0)
    return err("rados_create2", r);
  if (int r = rados_conf_read_file(img->cluster, rs.conf.empty() ? nullptr : rs.conf.c_str());
      r < 0) {
    if (!rs.conf.empty() || rs.mon_host.empty()) {
      return err(fmt::format("reading {}", rs.conf.empty() ? "the default ceph.conf" : rs.conf), r);
    }
  }
  auto set = [&](const char* key, const std::string& value) -> Status {
    if (int r = rados_conf_set(img->cluster, key, value.c_str()); r < 0) {
      return fail(Errc::kInvalidArgument, "image {}: {}={}: {}", spec.text, key, value,
                  rados_err(r));
    }
    return {};
  };
  if (!rs.keyring.empty()) ICEBLK_TRY(set("keyring", rs.keyring));
  if (!rs.mon_host.empty()) ICEBLK_TRY(set("mon_host", rs.mon_host));
  // Unreachable at start-up: give up after connect_timeout, naming the image.
  ICEBLK_TRY(set("client_mount_timeout", seconds(opts.connect_timeout)));
  ICEBLK_TRY(set("rados_mon_op_timeout", seconds(opts.connect_timeout)));
  // kFail: our own timer fails the request; librbd keeps the abandoned
  // operation (and its staging) no longer than this.
  ICEBLK_TRY(set("rados_osd_op_timeout", opts.on_error == StorageErrorPolicy::kFail
                                             ? seconds(opts.io_timeout * kOsdTimeoutFactor)
                                             : std::string("0")));
  if (int r = rados_connect(img->cluster); r < 0) return err("cannot connect to the cluster", r);
  if (int r = rados_ioctx_create(img->cluster, rs.pool.c_str(), &img->io); r < 0) {
    return err(fmt::format("pool {}", rs.pool), r);
  }
  img->read_only = opts.read_only || !rs.snap.empty();
  const char* snap = rs.snap.empty() ? nullptr : rs.snap.c_str();
  auto open = [&] {
    return img->read_only ? rbd_open_read_only(img->io, rs.image.c_str(), &img->image, snap)
                          : rbd_open(img->io, rs.image.c_str(), &img->image, snap);
  };
  int r = open();
  if (r == -ENOENT && opts.size != 0 && !img->read_only) {
    int order = 0;
    if (int c = rbd_create(img->io, rs.image.c_str(), opts.size, &order); c < 0 && c != -EEXIST) {
      return err(fmt::format("creating {} bytes", opts.size), c);
    }
    spdlog::info("image {}: created, {} bytes", spec.text, opts.size);
    r = open();
  }
  if (r == -ENOENT) {
    return fail(Errc::kNotFound,
                "image {}: no such RBD image{} (give a size, --size or \"size\", to create it)",
                spec.text, rs.snap.empty() ? "" : " or snapshot");
  }
  if (r < 0) return err("rbd_open", r);
  uint64_t size = 0;
  if (int g = rbd_get_size(img->image, &size); g < 0) return err("rbd_get_size", g);
  size = size / 512 * 512;
  if (opts.size != 0) {
    if (size < opts.size) {
      return fail(Errc::kInvalidArgument, "image {}: is {} bytes, smaller than the requested {}",
                  spec.text, size, opts.size);
    }
    size = opts.size;
  }
  if (size == 0) return fail(Errc::kInvalidArgument, "image {}: image is empty", spec.text);
  img->size = size;
  spdlog::info("image {}: RBD image of {} bytes{}", spec.text, size,
               img->read_only ? ", read-only" : "");
  return std::unique_ptr<BlockBackend>(std::make_unique<RbdBackend>(std::move(img)));
}

}  // namespace iceblk::backend
