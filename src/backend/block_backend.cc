#include "backend/block_backend.h"

#include "base/checked.h"

namespace iceblk::backend {

Result<uint64_t> check_io_request(const IoRequest& req, uint64_t size, bool read_only, std::string_view name) {
  const bool writes = req.op == IoOp::kWrite || req.op == IoOp::kDiscard || req.op == IoOp::kWriteZeroes;
  if (writes && read_only) return fail(Errc::kPermissionDenied, "{} is read-only", name);
  if (req.op == IoOp::kFlush) return uint64_t{0};
  uint64_t len = req.length;
  if (req.op == IoOp::kRead || req.op == IoOp::kWrite) {
    len = 0;
    for (const auto& v : req.iov) {
      auto s = checked_add<uint64_t>(len, v.iov_len);
      if (!s) return fail(Errc::kOverflow, "{}: request length overflows", name);
      len = *s;
    }
  }
  auto end = checked_add(req.offset, len);
  if (!end || *end > size) {
    return fail(Errc::kOutOfRange, "{}: range {}+{} beyond size {}", name, req.offset, len, size);
  }
  return len;
}

}  // namespace iceblk::backend
