#include "backend/file_io.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <vector>

#include "base/checked.h"

namespace iceblk::backend::detail {

namespace {

constexpr size_t kZeroBufSize = 64 * 1024;
alignas(4096) const uint8_t kZeros[kZeroBufSize] = {};

// Drop `n` transferred bytes from the front of `iov` (a private copy).
void advance(std::vector<iovec>& iov, size_t& first, uint64_t n) {
  while (n > 0 && first < iov.size()) {
    if (n >= iov[first].iov_len) {
      n -= iov[first].iov_len;
      ++first;
    } else {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + n;
      iov[first].iov_len -= n;
      n = 0;
    }
  }
  while (first < iov.size() && iov[first].iov_len == 0) ++first;
}

Status fallocate_range(const FileShared& f, int mode, uint64_t offset, uint64_t len, int& err) {
  for (;;) {
    if (::fallocate(f.fd.get(), mode, static_cast<off_t>(offset), static_cast<off_t>(len)) == 0) return {};
    if (errno == EINTR) continue;
    err = errno;
    return fail(errno_error(Errc::kIo, fmt::format("fallocate {}", f.path), err));
  }
}

}  // namespace

Result<uint64_t> rw_full(const FileShared& f, bool write, std::span<const iovec> iov, uint64_t offset) {
  uint64_t want = 0;
  for (const iovec& v : iov) want += v.iov_len;
  uint64_t total = 0;
  // The common case without a copy (nothing allocated per request): everything in
  // one call on the caller's iovecs. The private copy below only serves the rest of
  // a short transfer, an EINTR, or more than IOV_MAX iovecs.
  if (iov.size() <= IOV_MAX && want > 0) {
    const auto cnt = static_cast<int>(iov.size());
    const auto off = static_cast<off_t>(offset);
    const ssize_t n = write ? ::pwritev(f.fd.get(), iov.data(), cnt, off) : ::preadv(f.fd.get(), iov.data(), cnt, off);
    if (n >= 0 && static_cast<uint64_t>(n) == want) return want;
    if (n > 0) total = static_cast<uint64_t>(n);
    // An error is retried (EINTR/EAGAIN) or reported by the loop below.
  }
  std::vector<iovec> rest(iov.begin(), iov.end());
  size_t first = 0;
  while (first < rest.size() && rest[first].iov_len == 0) ++first;
  advance(rest, first, total);
  while (first < rest.size()) {
    const int cnt = static_cast<int>(std::min<size_t>(rest.size() - first, IOV_MAX));
    const auto off = static_cast<off_t>(offset + total);
    const ssize_t n = write ? ::pwritev(f.fd.get(), &rest[first], cnt, off)
                            : ::preadv(f.fd.get(), &rest[first], cnt, off);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return fail(errno_error(Errc::kIo, fmt::format("{} {} at {}", write ? "write" : "read", f.path, off),
                              errno));
    }
    if (n == 0) {
      return fail(Errc::kIo, "{} {} at {}: unexpected end of file", write ? "write" : "read", f.path, off);
    }
    total += static_cast<uint64_t>(n);
    advance(rest, first, static_cast<uint64_t>(n));
  }
  return total;
}

Status flush_file(const FileShared& f) {
  for (;;) {
    if (::fdatasync(f.fd.get()) == 0) return {};
    if (errno == EINTR) continue;
    return fail(errno_error(Errc::kIo, fmt::format("fdatasync {}", f.path), errno));
  }
}

Status write_zero_bytes(const FileShared& f, uint64_t offset, uint64_t len) {
  constexpr size_t kVecs = 16;  // up to 1 MiB per call
  std::vector<iovec> iov;
  iov.reserve(kVecs);
  uint64_t done = 0;
  while (done < len) {
    iov.clear();
    uint64_t chunk = 0;
    while (iov.size() < kVecs && done + chunk < len) {
      const uint64_t n = std::min<uint64_t>(kZeroBufSize, len - done - chunk);
      // pwritev only reads from the buffer; the const_cast is for struct iovec.
      iov.push_back({const_cast<uint8_t*>(kZeros), n});
      chunk += n;
    }
    ICEBLK_TRY(rw_full(f, true, iov, offset + done));
    done += chunk;
  }
  return {};
}

Status discard_range(FileShared& f, uint64_t offset, uint64_t len) {
  if (f.punch_ok.load(std::memory_order_relaxed)) {
    int err = 0;
    auto r = fallocate_range(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len, err);
    if (r) return {};
    if (!is_unsupported_errno(err)) return r;
    if (err != EINVAL) f.punch_ok.store(false, std::memory_order_relaxed);
  }
  return write_zero_bytes(f, offset, len);
}

Status write_zeroes_range(FileShared& f, uint64_t offset, uint64_t len, bool unmap) {
  int err = 0;
  if (unmap && f.punch_ok.load(std::memory_order_relaxed)) {
    auto r = fallocate_range(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len, err);
    if (r) return {};
    if (!is_unsupported_errno(err)) return r;
    if (err != EINVAL) f.punch_ok.store(false, std::memory_order_relaxed);
  }
  if (f.zero_range_ok.load(std::memory_order_relaxed)) {
    auto r = fallocate_range(f, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len, err);
    if (r) return {};
    if (!is_unsupported_errno(err)) return r;
    if (err != EINVAL) f.zero_range_ok.store(false, std::memory_order_relaxed);
  }
  return write_zero_bytes(f, offset, len);
}

Status check_request(const FileShared& f, const IoRequest& req) {
  ICEBLK_TRY(check_io_request(req, f.size, f.read_only, f.path));
  return {};
}

Result<uint64_t> run_sync(FileShared& f, const IoRequest& req) {
  ICEBLK_TRY(check_request(f, req));
  switch (req.op) {
    case IoOp::kRead: return rw_full(f, false, req.iov, req.offset);
    case IoOp::kWrite: return rw_full(f, true, req.iov, req.offset);
    case IoOp::kFlush:
      ICEBLK_TRY(flush_file(f));
      return uint64_t{0};
    case IoOp::kDiscard:
      ICEBLK_TRY(discard_range(f, req.offset, req.length));
      return req.length;
    case IoOp::kWriteZeroes:
      ICEBLK_TRY(write_zeroes_range(f, req.offset, req.length, req.unmap));
      return req.length;
  }
  return fail(Errc::kInvalidArgument, "unknown I/O op");
}

}  // namespace iceblk::backend::detail
