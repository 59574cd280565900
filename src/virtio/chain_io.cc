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

namespace {

// fn(guest address, length) for each piece of the view [off, off + len) of `segs`,
// in order. Nothing is allocated (the status byte and the header of every request
// come through here).
template <typename Fn>
Status for_each_piece(std::span<const Segment> segs, uint64_t off, uint64_t len, Fn&& fn) {
  for (const auto& s : segs) {
    if (len == 0) break;
    if (off >= s.len) {
      off -= s.len;
      continue;
    }
    const uint64_t take = std::min<uint64_t>(s.len - off, len);
    auto a = checked_add(s.addr.value, off);
    if (!a) return fail(Errc::kOverflow, "segment address overflows");
    ICEBLK_TRY(fn(GuestAddr(*a), take));
    len -= take;
    off = 0;
  }
  if (len != 0) return fail(Errc::kOutOfRange, "chain is {} bytes too short", len);
  return {};
}

}  // namespace

Status ChainBytes::iovecs(const memory::GuestMemory& mem, std::vector<iovec>& out) const {
  return for_each_piece(segs_, off_, len_,
                        [&](GuestAddr a, uint64_t n) { return mem.translate(a, n, out); });
}

Status ChainBytes::read(const memory::GuestMemory& mem, std::span<uint8_t> dst) const {
  if (dst.size() > len_) return fail(Errc::kOutOfRange, "chain is {} bytes too short", dst.size() - len_);
  size_t at = 0;
  // TRUST: one copy out of guest memory (read() checks each range against `mem`);
  // callers only look at `dst`.
  return for_each_piece(segs_, off_, dst.size(), [&](GuestAddr a, uint64_t n) {
    auto st = mem.read(a, dst.subspan(at, static_cast<size_t>(n)));
    at += static_cast<size_t>(n);
    return st;
  });
}

Result<uint8_t*> ChainBytes::byte(const memory::GuestMemory& mem) const {
  if (len_ != 1) return fail(Errc::kProtocol, "expected one byte, the view has {}", len_);
  uint8_t* p = nullptr;
  ICEBLK_TRY(for_each_piece(segs_, off_, len_, [&](GuestAddr a, uint64_t) -> Status {
    ICEBLK_ASSIGN_OR_RETURN(p, mem.contiguous(a, 1));
    return {};
  }));
  return p;
}

}  // namespace iceblk::virtio
