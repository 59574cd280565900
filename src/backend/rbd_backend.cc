// Ceph RBD backend through librbd's C API (aio). One cluster connection and one
// open image per backend, shared by its queues (librbd's image handle is thread
// safe). librbd runs completion callbacks on its own threads: they only move the
// finished operation onto a mutex-protected list and signal the queue's eventfd;
// IoRequest::done runs from reap() on the queue's thread.
//
// Every operation owns its data buffer (writes are copied in at submission, reads
// copied out at completion). That is what lets drain() give up on a cluster that
// does not answer: it fails the requests and leaves the operations to librbd,
// which may still complete them later into memory that is still ours (guest memory
// may be gone by then). The copy costs little next to a network round trip.
//
// Storage going away: librbd retries by itself (StorageErrorPolicy::kRetry). With
// kFail, rados_osd_op_timeout makes librbd fail an operation after io_timeout.
#include <poll.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "backend/image_spec.h"
#include "base/log.h"
#include "base/unique_fd.h"

namespace iceblk::backend {

namespace {

using Clock = std::chrono::steady_clock;

std::string rados_err(int r) {
  return std::strerror(r < 0 ? -r : r);
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
    if (image != nullptr) rbd_close(image);
    if (io != nullptr) rados_ioctx_destroy(io);
    if (cluster != nullptr) rados_shutdown(cluster);
  }
};

struct RbdOp;

// What a queue shares with librbd's callback threads. Outlives the queue while
// abandoned operations are still in librbd.
struct Mailbox {
  std::mutex mu;
  std::vector<RbdOp*> done;              // finished, for reap()
  std::unordered_set<RbdOp*> abandoned;  // given up by drain(); freed when librbd finishes them
  UniqueFd efd;
};

struct RbdOp {
  IoRequest req;
  uint64_t len = 0;
  std::unique_ptr<uint8_t[]> buf;
  rbd_completion_t comp = nullptr;
  std::shared_ptr<Mailbox> box;  // keeps the mailbox alive for the callback
  ssize_t ret = 0;
};

void free_op(RbdOp* op) {
  if (op->comp != nullptr) rbd_aio_release(op->comp);
  delete op;
}

// librbd's thread.
void on_complete(rbd_completion_t c, void* arg) {
  auto* op = static_cast<RbdOp*>(arg);
  op->ret = rbd_aio_get_return_value(c);
  auto box = op->box;  // (op may be freed below)
  bool abandoned = false;
  {
    std::lock_guard lk(box->mu);
    abandoned = box->abandoned.erase(op) > 0;
    if (!abandoned) box->done.push_back(op);
  }
  if (abandoned) {
    // Releasing the completion from inside its callback is allowed (QEMU does it).
    free_op(op);
    return;
  }
  const uint64_t one = 1;
  (void)!::write(box->efd.get(), &one, sizeof one);
}

class RbdQueue final : public IoQueue {
 public:
  RbdQueue(std::shared_ptr<RbdImage> img, std::shared_ptr<Mailbox> box)
      : img_(std::move(img)), box_(std::move(box)) {}
  ~RbdQueue() override { drain(); }

  void submit(IoRequest req) override {
    auto len = check_io_request(req, img_->size, img_->read_only, img_->spec.text);
    if (!len) {
      req.done(tl::unexpected(std::move(len).error()));
      return;
    }
    auto* op = new RbdOp;
    op->req = std::move(req);
    op->len = *len;
    op->box = box_;
    if (int r = start(op); r < 0) {
      auto result = Result<uint64_t>(fail(errno_error(Errc::kIo, what(*op), -r)));
      IoRequest failed = std::move(op->req);
      free_op(op);
      failed.done(std::move(result));
      return;
    }
    ++in_flight_;
    live_.insert(op);
  }

  int completion_fd() const override { return box_->efd.get(); }

  size_t reap() override {
    std::vector<RbdOp*> batch;
    {
      std::lock_guard lk(box_->mu);
      batch.swap(box_->done);
    }
    for (RbdOp* op : batch) {
      live_.erase(op);
      --in_flight_;
      Result<uint64_t> result = finish(*op);  // (copies a read into req.iov)
      IoRequest req = std::move(op->req);
      free_op(op);
      req.done(std::move(result));
    }
    return batch.size();
  }

  size_t in_flight() const override { return in_flight_; }

  void drain() override {
    const auto limit = Clock::now() + img_->opts.io_timeout;
    while (in_flight_ > 0) {
      if (reap() > 0) continue;
      if (Clock::now() >= limit) {
        abandon_all();
        return;
      }
      pollfd p{box_->efd.get(), POLLIN, 0};
      ::poll(&p, 1, 100);
      uint64_t v;
      (void)!::read(box_->efd.get(), &v, sizeof v);
    }
  }

 private:
  std::string what(const RbdOp& op) const {
    static constexpr const char* kNames[] = {"read", "write", "flush", "discard", "write-zeroes"};
    return fmt::format("{} {} at {}", kNames[static_cast<int>(op.req.op)], img_->spec.text,
                       op.req.offset);
  }

  int start(RbdOp* op) {
    int r = rbd_aio_create_completion(op, on_complete, &op->comp);
    if (r < 0) return r;
    const IoRequest& req = op->req;
    rbd_image_t im = img_->image;
    switch (req.op) {
      case IoOp::kRead:
        op->buf.reset(new uint8_t[op->len]);
        return rbd_aio_read(im, req.offset, op->len, reinterpret_cast<char*>(op->buf.get()),
                            op->comp);
      case IoOp::kWrite: {
        op->buf.reset(new uint8_t[op->len]);
        uint64_t at = 0;
        for (const iovec& v : req.iov) {
          std::memcpy(op->buf.get() + at, v.iov_base, v.iov_len);
          at += v.iov_len;
        }
        return rbd_aio_write(im, req.offset, op->len, reinterpret_cast<const char*>(op->buf.get()),
                             op->comp);
      }
      case IoOp::kFlush:
        return rbd_aio_flush(im, op->comp);
      case IoOp::kDiscard:
        return rbd_aio_discard(im, req.offset, req.length, op->comp);
      case IoOp::kWriteZeroes:
        // librbd may deallocate either way; the data reads back as zeros.
        return rbd_aio_write_zeroes(im, req.offset, req.length, op->comp, 0, 0);
    }
    return -EINVAL;
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
      uint64_t at = 0;
      for (const iovec& v : op.req.iov) {
        std::memcpy(v.iov_base, op.buf.get() + at, v.iov_len);
        at += v.iov_len;
      }
    }
    return op.len;
  }

  // drain() gave up: fail every request still in librbd; the operations stay
  // with librbd (they own their buffers) and are freed by on_complete.
  void abandon_all() {
    std::vector<IoRequest> failed;
    {
      std::lock_guard lk(box_->mu);
      for (RbdOp* op : live_) {
        if (std::find(box_->done.begin(), box_->done.end(), op) != box_->done.end()) continue;
        box_->abandoned.insert(op);
        failed.push_back(std::move(op->req));
      }
    }
    spdlog::error("{}: storage not answering; failing {} request(s) still in flight",
                  img_->spec.text, failed.size());
    for (RbdOp* op : box_->abandoned) live_.erase(op);
    in_flight_ -= failed.size();
    for (auto& req : failed)
      req.done(fail(Errc::kIo, "{}: storage not answering", img_->spec.text));
    reap();  // the ones that did finish meanwhile
  }

  std::shared_ptr<RbdImage> img_;
  std::shared_ptr<Mailbox> box_;
  size_t in_flight_ = 0;
  std::unordered_set<RbdOp*> live_;
};

class RbdBackend final : public BlockBackend {
 public:
  explicit RbdBackend(std::shared_ptr<RbdImage> img) : img_(std::move(img)) {}
  uint64_t size_bytes() const override { return img_->size; }
  bool read_only() const override { return img_->read_only; }
  bool supports_discard() const override { return !img_->read_only; }
  std::string describe() const override { return fmt::format("rbd {}", img_->spec.text); }
  Result<std::unique_ptr<IoQueue>> make_queue(unsigned /*depth*/) override {
    auto box = std::make_shared<Mailbox>();
    box->efd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!box->efd) return fail(errno_error(Errc::kIo, "rbd queue: eventfd", errno));
    return std::unique_ptr<IoQueue>(std::make_unique<RbdQueue>(img_, std::move(box)));
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
  ICEBLK_TRY(set("rados_osd_op_timeout", opts.on_error == StorageErrorPolicy::kFail
                                             ? seconds(opts.io_timeout)
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
