#include "virtio/chain_io.h"

#include "base/checked.h"

namespace iceblk::virtio {

ChainBytes::ChainBytes(std::span<const Segment> segs) : segs_(segs) {
  for (const auto& s : segs) len_ += s.len;  // no overflow: the walker bounds each direction to UINT32_MAX
}

std::pair<ChainBytes, ChainBytes> ChainBytes::split_at(uint64_t n) const {
  n = std::min(n, len_);
  ChainBytes head = *this;
  head.len_ = n;
  ChainBytes tail = *this;
  tail.off_ = off_ + n;
  tail.len_ = len_ - n;
  return {head, tail};
}

Status ChainBytes::iovecs(const memory::GuestMemory& mem, std::vector<iovec>& out) const {
  uint64_t off = off_;
  uint64_t len = len_;
  for (const auto& s : segs_) {
    if (len == 0) break;
    if (off >= s.len) {
      off -= s.len;
      continue;
    }
    const uint64_t take = std::min<uint64_t>(s.len - off, len);
    auto a = checked_add(s.addr.value, off);
    if (!a) return fail(Errc::kOverflow, "segment address overflows");
    ICEBLK_TRY(mem.translate(GuestAddr(*a), take, out));
    len -= take;
    off = 0;
  }
  if (len != 0) return fail(Errc::kOutOfRange, "chain is {} bytes too short", len);
  return {};
}

Status ChainBytes::read(const memory::GuestMemory& mem, std::span<uint8_t> dst) const {
  if (dst.size() > len_) return fail(Errc::kOutOfRange, "chain is {} bytes too short", dst.size() - len_);
  std::vector<iovec> iov;
  ICEBLK_TRY(split_at(dst.size()).first.iovecs(mem, iov));
  // TRUST: one copy out of guest memory; callers only look at `dst`.
  if (memory::copy_from_iovecs(iov, dst) != dst.size()) {
    return fail(Errc::kOutOfRange, "short copy from guest memory");
  }
  return {};
}

Result<uint8_t*> ChainBytes::byte(const memory::GuestMemory& mem) const {
  if (len_ != 1) return fail(Errc::kProtocol, "expected one byte, the view has {}", len_);
  std::vector<iovec> iov;
  ICEBLK_TRY(iovecs(mem, iov));
  return static_cast<uint8_t*>(iov.front().iov_base);
}

}  // namespace iceblk::virtio
