// Storage seam of the device: everything below virtio-blk request parsing.
// Implementations: file (pread/pwritev, synchronous), file (io_uring, asynchronous),
// memory (tests). Each queue worker owns one IoQueue, so queues share no state
// inside the backend beyond the file itself.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace iceblk::backend {

enum class IoOp { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

// One operation. `iov` points into memory that stays valid until the completion
// callback runs (guest memory, or a bounce buffer owned by the request).
struct IoRequest {
  IoOp op = IoOp::kRead;
  uint64_t offset = 0;  // bytes; already checked against capacity by the caller
  uint64_t length = 0;  // bytes for discard / write-zeroes; sum of iov for read/write
  std::vector<iovec> iov;
  bool unmap = false;  // write-zeroes: may deallocate
  // Called exactly once, from the thread that calls IoQueue::reap()/submit(),
  // with the result (bytes transferred or error).
  std::function<void(Result<uint64_t>)> done;
};

// A per-worker submission/completion queue.
class IoQueue {
 public:
  virtual ~IoQueue() = default;
  // Queue one request. Synchronous backends complete it (call done) before returning.
  virtual void submit(IoRequest req) = 0;
  // Push queued requests to the kernel (no-op for synchronous backends).
  virtual void flush_submissions() {}
  // An fd that becomes readable when completions are ready, or -1 if the backend
  // completes synchronously.
  [[nodiscard]] virtual int completion_fd() const { return -1; }
  // Run callbacks for finished requests; returns how many completed.
  virtual size_t reap() { return 0; }
  // Requests submitted and not yet completed.
  [[nodiscard]] virtual size_t in_flight() const { return 0; }
  // Block until every in-flight request has completed (used on stop/shutdown).
  virtual void drain() {}
};

class BlockBackend {
 public:
  virtual ~BlockBackend() = default;
  [[nodiscard]] virtual uint64_t size_bytes() const = 0;
  [[nodiscard]] virtual bool read_only() const = 0;
  [[nodiscard]] virtual bool supports_discard() const = 0;
  [[nodiscard]] virtual std::string describe() const = 0;  // e.g. "file(io_uring) disk.img"
  virtual Result<std::unique_ptr<IoQueue>> make_queue(unsigned depth) = 0;
};

// The check every backend applies before running a request: no writes (write,
// discard, write-zeroes) on a read-only backend, and the byte range (the iovecs'
// total for read/write, `length` otherwise) inside `size`, overflow-checked.
// `name` prefixes the error message (e.g. the image path). Returns the byte length
// (0 for flush).
Result<uint64_t> check_io_request(const IoRequest& req, uint64_t size, bool read_only, std::string_view name);

enum class FileEngine { kAuto, kSync, kIoUring };

struct FileOptions {
  std::string path;
  bool read_only = false;
  bool create = false;        // create (or extend) to `size` bytes if missing
  uint64_t size = 0;          // bytes; 0 = use the existing file's size
  FileEngine engine = FileEngine::kAuto;  // auto: io_uring when the kernel allows it
  bool direct = false;        // O_DIRECT
};

// Open a file-backed backend. Errors name the path and the reason.
Result<std::unique_ptr<BlockBackend>> open_file_backend(const FileOptions& opts);

// In-memory backend (tests, demos). `size` must be a multiple of 512.
Result<std::unique_ptr<BlockBackend>> make_memory_backend(uint64_t size, bool read_only = false);

// Test access to the bytes of a memory backend (nullptr for other backends).
std::span<uint8_t> memory_backend_bytes(BlockBackend& b);

}  // namespace iceblk::backend
