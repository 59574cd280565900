// Internal helpers of the file backends (sync and io_uring): whole-range vectored
// I/O, and the discard / write-zeroes strategies with their fallbacks.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "backend/block_backend.h"
#include "base/unique_fd.h"

namespace iceblk::backend::detail {

// State shared by every queue of one file backend. Only the fd and immutable facts,
// plus two sticky "the filesystem refused this fallocate mode" flags.
struct FileShared {
  UniqueFd fd;
  std::string path;
  uint64_t size = 0;
  bool read_only = false;
  bool direct = false;
  std::atomic<bool> punch_ok{true};       // FALLOC_FL_PUNCH_HOLE works here
  std::atomic<bool> zero_range_ok{true};  // FALLOC_FL_ZERO_RANGE works here
};

// Transfer all of `iov` at `offset`, looping on short transfers and EINTR and
// splitting at IOV_MAX. A read that hits end of file is an error (kIo).
Result<uint64_t> rw_full(const FileShared& f, bool write, std::span<const iovec> iov, uint64_t offset);

Status flush_file(const FileShared& f);

// Discard: punch a hole when the filesystem allows it, else write zeros.
Status discard_range(FileShared& f, uint64_t offset, uint64_t len);

// Write zeroes: PUNCH_HOLE when `unmap` (reads return zeros), else ZERO_RANGE,
// else plain writes of zeros.
Status write_zeroes_range(FileShared& f, uint64_t offset, uint64_t len, bool unmap);

// Plain writes of zeros (the last-resort fallback).
Status write_zero_bytes(const FileShared& f, uint64_t offset, uint64_t len);

// Whether the fallocate error means "this mode is not supported here".
inline bool is_unsupported_errno(int e) { return e == EOPNOTSUPP || e == ENOSYS || e == EINVAL; }

// Runs one request synchronously (used by the sync queue and by io_uring fallbacks).
Result<uint64_t> run_sync(FileShared& f, const IoRequest& req);

// Check that a request is allowed on this backend (read-only, bounds).
Status check_request(const FileShared& f, const IoRequest& req);

// io_uring queue (uring_queue.cc). Fails if the kernel refuses io_uring_queue_init.
Result<std::unique_ptr<IoQueue>> make_uring_queue(std::shared_ptr<FileShared> f, unsigned depth);
// Whether io_uring can be set up at all (creates and destroys a tiny ring).
Status probe_uring();

}  // namespace iceblk::backend::detail
