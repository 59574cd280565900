// File-backed BlockBackend: open/create, size checks, and the synchronous queue.
// The io_uring queue lives in uring_queue.cc.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "backend/block_backend.h"
#include "backend/file_io.h"
#include "base/log.h"
#include "base/strong_types.h"

namespace iceblk::backend {

namespace {

using detail::FileShared;

class SyncFileQueue final : public IoQueue {
 public:
  explicit SyncFileQueue(std::shared_ptr<FileShared> f) : f_(std::move(f)) {}
  void submit(IoRequest req) override {
    auto r = detail::run_sync(*f_, req);
    req.done(std::move(r));
  }

 private:
  std::shared_ptr<FileShared> f_;
};

class FileBackend final : public BlockBackend {
 public:
  FileBackend(std::shared_ptr<FileShared> f, bool uring, bool auto_mode, bool discard)
      : f_(std::move(f)), uring_(uring), auto_(auto_mode), discard_(discard) {}

  uint64_t size_bytes() const override { return f_->size; }
  bool read_only() const override { return f_->read_only; }
  bool supports_discard() const override { return discard_; }
  std::string describe() const override {
    return fmt::format("file({}) {}", uring_ ? "io_uring" : "sync", f_->path);
  }

  Result<std::unique_ptr<IoQueue>> make_queue(unsigned depth) override {
    if (uring_) {
      auto q = detail::make_uring_queue(f_, depth == 0 ? 1 : depth);
      if (q || !auto_) return q;
      spdlog::warn("{}: io_uring queue unavailable ({}), using synchronous I/O for this queue", f_->path,
                   q.error().to_string());
    }
    return std::unique_ptr<IoQueue>(std::make_unique<SyncFileQueue>(f_));
  }

 private:
  std::shared_ptr<FileShared> f_;
  bool uring_;
  bool auto_;
  bool discard_;
};

// Whether punching holes works on this file, probed beyond the end of a regular
// file (KEEP_SIZE: no data and no size change). Block devices: assume yes and fall
// back to writes of zeros at run time.
bool probe_punch_hole(const FileShared& f, bool regular) {
  if (f.read_only) return false;
  if (!regular) return true;
  const off_t at = static_cast<off_t>(f.size) + (1 << 20);
  if (::fallocate(f.fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, 4096) == 0) return true;
  return !detail::is_unsupported_errno(errno);
}

}  // namespace

Result<std::unique_ptr<BlockBackend>> open_file_backend(const FileOptions& opts) {
  if (opts.path.empty()) return fail(Errc::kInvalidArgument, "file backend: empty path");
  const std::string& path = opts.path;
  if (opts.size % kSectorSize != 0) {
    return fail(Errc::kInvalidArgument, "{}: requested size {} is not a multiple of 512", path, opts.size);
  }
  if (opts.create && opts.read_only) {
    return fail(Errc::kInvalidArgument, "{}: cannot create a read-only image", path);
  }
  int flags = (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (opts.direct) flags |= O_DIRECT;
  if (opts.create) flags |= O_CREAT;
  UniqueFd fd(::open(path.c_str(), flags, 0600));
  if (!fd) {
    const int e = errno;
    if (e == ENOENT) {
      return fail(Errc::kNotFound, "{}: no such file (pass create and a size to create it)", path);
    }
    if (!opts.read_only && (e == EACCES || e == EROFS || e == EPERM)) {
      return fail(errno_error(Errc::kPermissionDenied,
                              fmt::format("{}: cannot open read-write (export it read-only?)", path), e));
    }
    return fail(errno_error(Errc::kIo, fmt::format("{}: open", path), e));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail(errno_error(Errc::kIo, fmt::format("{}: fstat", path), errno));
  const bool regular = S_ISREG(st.st_mode);
  uint64_t actual = 0;
  if (regular) {
    actual = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd.get(), BLKGETSIZE64, &actual) != 0) {
      return fail(errno_error(Errc::kIo, fmt::format("{}: BLKGETSIZE64", path), errno));
    }
  } else {
    return fail(Errc::kInvalidArgument, "{}: not a regular file or block device", path);
  }

  uint64_t size = actual;
  if (opts.size != 0) {
    if (actual < opts.size) {
      if (!opts.create || !regular) {
        return fail(Errc::kInvalidArgument, "{}: is {} bytes, smaller than the requested {}", path, actual,
                    opts.size);
      }
      if (::ftruncate(fd.get(), static_cast<off_t>(opts.size)) != 0) {
        return fail(errno_error(Errc::kIo, fmt::format("{}: extend to {} bytes", path, opts.size), errno));
      }
    }
    size = opts.size;  // a larger file exports only its first `size` bytes
  }
  if (size == 0) return fail(Errc::kInvalidArgument, "{}: image is empty (give a size to create it)", path);
  if (size % kSectorSize != 0) {
    return fail(Errc::kInvalidArgument, "{}: size {} is not a multiple of 512", path, size);
  }

  auto shared = std::make_shared<FileShared>();
  shared->fd = std::move(fd);
  shared->path = path;
  shared->size = size;
  shared->read_only = opts.read_only;
  shared->direct = opts.direct;
  const bool discard = probe_punch_hole(*shared, regular);
  if (!discard) shared->punch_ok = false;

  bool uring = false;
  switch (opts.engine) {
    case FileEngine::kSync: break;
    case FileEngine::kIoUring: {
      auto p = detail::probe_uring();
      if (!p) return fail(Errc::kUnsupported, "{}: io_uring requested but unavailable: {}", path, p.error().message);
      uring = true;
      break;
    }
    case FileEngine::kAuto: {
      auto p = detail::probe_uring();
      if (p) {
        uring = true;
      } else {
        spdlog::info("{}: io_uring unavailable ({}); using synchronous file I/O", path, p.error().message);
      }
      break;
    }
  }
  return std::unique_ptr<BlockBackend>(
      std::make_unique<FileBackend>(std::move(shared), uring, opts.engine == FileEngine::kAuto, discard));
}

}  // namespace iceblk::backend
