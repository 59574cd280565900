// In-memory BlockBackend for tests and demos. Every queue completes synchronously;
// one mutex serialises access so concurrent queues never race on the bytes.
#include <cstring>
#include <mutex>
#include <vector>

#include "backend/block_backend.h"
#include "base/checked.h"
#include "base/strong_types.h"

namespace iceblk::backend {

namespace {

class MemoryBackend;

class MemoryQueue final : public IoQueue {
 public:
  explicit MemoryQueue(MemoryBackend& b) : b_(b) {}
  void submit(IoRequest req) override;

 private:
  MemoryBackend& b_;
};

class MemoryBackend final : public BlockBackend {
 public:
  MemoryBackend(uint64_t size, bool ro) : bytes_(size), ro_(ro) {}
  uint64_t size_bytes() const override { return bytes_.size(); }
  bool read_only() const override { return ro_; }
  bool supports_discard() const override { return true; }
  std::string describe() const override { return fmt::format("memory({} bytes)", bytes_.size()); }
  Result<std::unique_ptr<IoQueue>> make_queue(unsigned) override {
    return std::unique_ptr<IoQueue>(std::make_unique<MemoryQueue>(*this));
  }

  Result<uint64_t> run(const IoRequest& req) {
    ICEBLK_ASSIGN_OR_RETURN(const uint64_t len, check_io_request(req, bytes_.size(), ro_, "memory backend"));
    if (req.op == IoOp::kFlush) return uint64_t{0};
    std::lock_guard lock(mu_);
    uint8_t* p = bytes_.data() + req.offset;
    switch (req.op) {
      case IoOp::kRead:
        for (const auto& v : req.iov) {
          std::memcpy(v.iov_base, p, v.iov_len);
          p += v.iov_len;
        }
        break;
      case IoOp::kWrite:
        for (const auto& v : req.iov) {
          std::memcpy(p, v.iov_base, v.iov_len);
          p += v.iov_len;
        }
        break;
      case IoOp::kDiscard:
      case IoOp::kWriteZeroes: std::memset(p, 0, len); break;
      case IoOp::kFlush: break;
    }
    return len;
  }

  std::span<uint8_t> bytes() { return bytes_; }

 private:
  std::mutex mu_;
  std::vector<uint8_t> bytes_;
  bool ro_;
};

void MemoryQueue::submit(IoRequest req) {
  auto r = b_.run(req);
  req.done(std::move(r));
}

}  // namespace

Result<std::unique_ptr<BlockBackend>> make_memory_backend(uint64_t size, bool read_only) {
  if (size == 0 || size % kSectorSize != 0) {
    return fail(Errc::kInvalidArgument, "memory backend: size {} is not a positive multiple of 512", size);
  }
  return std::unique_ptr<BlockBackend>(std::make_unique<MemoryBackend>(size, read_only));
}

std::span<uint8_t> memory_backend_bytes(BlockBackend& b) {
  if (auto* m = dynamic_cast<MemoryBackend*>(&b)) return m->bytes();
  return {};
}

}  // namespace iceblk::backend
