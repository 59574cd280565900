// Storage seam of the device: everything below virtio-blk request parsing.
// Implementations: file (pread/pwritev, synchronous), file (io_uring, asynchronous),
// memory (tests). Each queue worker owns one IoQueue, so queues share no state
// inside the backend beyond the file itself.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace iceblk::backend {

enum class IoOp { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

// The iovecs of one request, without an allocation: up to kInline entries are held
// inline (a braced list: `{{buf, len}}`), more are a view of caller-owned iovecs
// (a std::vector or span that must stay alive, unchanged, until `done` has run).
// Iterates as `const iovec&`; copies and moves are cheap and keep a view a view.
class IoVecs {
 public:
  static constexpr size_t kInline = 4;
  IoVecs() = default;
  IoVecs(std::initializer_list<iovec> l) {
    if (l.size() > kInline) throw std::length_error("IoVecs: more than kInline iovecs in a braced list");
    std::copy(l.begin(), l.end(), inline_.begin());
    n_ = l.size();
  }
  IoVecs(std::span<const iovec> view) : view_(view.data()), n_(view.size()) {}
  IoVecs(const std::vector<iovec>& v) : IoVecs(std::span<const iovec>(v)) {}
  IoVecs(std::vector<iovec>&&) = delete;  // would dangle: the caller owns the storage

  [[nodiscard]] const iovec* data() const { return view_ != nullptr ? view_ : inline_.data(); }
  [[nodiscard]] size_t size() const { return n_; }
  [[nodiscard]] bool empty() const { return n_ == 0; }
  [[nodiscard]] const iovec* begin() const { return data(); }
  [[nodiscard]] const iovec* end() const { return data() + n_; }
  const iovec& operator[](size_t i) const { return data()[i]; }
  operator std::span<const iovec>() const { return {data(), n_}; }  // NOLINT: implicit on purpose

 private:
  std::array<iovec, kInline> inline_{};
  const iovec* view_ = nullptr;  // set: caller-owned entries
  size_t n_ = 0;
};

// One operation. `iov` points into memory that stays valid until the completion
// callback runs (guest memory, or a bounce buffer owned by the request).
// Steady state allocates nothing: `iov` is inline or a view (IoVecs), and `done`
// is a std::function whose callers capture at most two pointers (libstdc++ keeps
// a trivially copyable functor of up to 16 bytes inline; blk_zero_alloc_test
// checks the data path end to end).
struct IoRequest {
  IoOp op = IoOp::kRead;
  uint64_t offset = 0;  // bytes; already checked against capacity by the caller
  uint64_t length = 0;  // bytes for discard / write-zeroes; sum of iov for read/write
  IoVecs iov;
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
