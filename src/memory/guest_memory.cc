#include "memory/guest_memory.h"

#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/checked.h"
#include "memory/fault_guard.h"
#include "memory/tsan_shared_memory.h"

namespace iceblk::memory {

namespace {

// Last byte of [start, start + size), size > 0, or nullopt if it wraps past 2^64.
std::optional<uint64_t> last_byte(uint64_t start, uint64_t size) {
  if (size == 0) return std::nullopt;
  return checked_add(start, size - 1);
}

uint64_t region_last(const Region& r) { return r.guest_addr + (r.size - 1); }

}  // namespace

// ---------------------------------------------------------------------------
// Mapping

Result<std::shared_ptr<Mapping>> Mapping::map_fd(int fd, uint64_t mmap_offset, uint64_t size,
                                                 Faults faults) {
  if (fd < 0) return fail(Errc::kInvalidArgument, "map_fd: invalid fd {}", fd);
  if (size == 0) return fail(Errc::kInvalidArgument, "map_fd: empty mapping");
  const long page_l = ::sysconf(_SC_PAGESIZE);
  const uint64_t page = page_l > 0 ? static_cast<uint64_t>(page_l) : 4096;
  // mmap wants a page-aligned file offset: map from the aligned-down offset and
  // point data() at the requested byte.
  const uint64_t aligned = mmap_offset & ~(page - 1);
  const uint64_t delta = mmap_offset - aligned;
  auto map_len = checked_add(size, delta);
  if (!map_len || *map_len > static_cast<uint64_t>(SIZE_MAX) ||
      aligned > static_cast<uint64_t>(INT64_MAX)) {
    return fail(Errc::kOverflow, "map_fd: size {} at offset {} overflows", size, mmap_offset);
  }
  void* base = ::mmap(nullptr, static_cast<size_t>(*map_len), PROT_READ | PROT_WRITE, MAP_SHARED,
                      fd, static_cast<off_t>(aligned));
  if (base == MAP_FAILED) return fail(errno_error(Errc::kIo, "mmap", errno));
  auto* data = static_cast<uint8_t*>(base) + delta;
  uint32_t guard = kNoGuard;
  if (faults == Faults::kContain) {
    // The guard replaces whole pages of the mapping: huge pages for hugetlbfs.
    uint64_t granule = page;
    struct statfs sfs {};
    if (::fstatfs(fd, &sfs) == 0 && sfs.f_type == HUGETLBFS_MAGIC && sfs.f_bsize > 0) {
      granule = static_cast<uint64_t>(sfs.f_bsize);
    }
    auto id = fault_guard::register_range(base, static_cast<size_t>(*map_len), granule);
    if (!id) {
      ::munmap(base, static_cast<size_t>(*map_len));
      return tl::unexpected(std::move(id).error());
    }
    guard = *id;
  }
  tsan::note_mapping(base, static_cast<size_t>(*map_len), fd, aligned);  // no-op without TSan
  return std::shared_ptr<Mapping>(new Mapping(base, *map_len, data, size, guard));
}

Mapping::~Mapping() {
  if (base_ != nullptr) {
    tsan::forget_mapping(base_);
    // ORDER: unregistered before the munmap (fault_guard.h).
    if (guard_ != kNoGuard) fault_guard::unregister_range(guard_);
    ::munmap(base_, static_cast<size_t>(map_len_));
  }
}

bool Mapping::poisoned() const {
  return guard_ != kNoGuard && fault_guard::poisoned(guard_);
}

// ---------------------------------------------------------------------------
// GuestMemory

Result<GuestMemory> GuestMemory::create(std::vector<Region> regions) {
  for (const auto& r : regions) {
    if (r.size == 0) return fail(Errc::kInvalidArgument, "memory region at {:#x} is empty", r.guest_addr);
    if (r.host == nullptr) {
      return fail(Errc::kInvalidArgument, "memory region at {:#x} has no host mapping", r.guest_addr);
    }
    if (!last_byte(r.guest_addr, r.size)) {
      return fail(Errc::kOverflow, "memory region {:#x}+{:#x} wraps the guest address space",
                  r.guest_addr, r.size);
    }
    if (!last_byte(r.user_addr, r.size)) {
      return fail(Errc::kOverflow, "memory region user address {:#x}+{:#x} wraps", r.user_addr, r.size);
    }
  }
  std::sort(regions.begin(), regions.end(),
            [](const Region& a, const Region& b) { return a.guest_addr < b.guest_addr; });
  for (size_t i = 1; i < regions.size(); ++i) {
    if (regions[i].guest_addr <= region_last(regions[i - 1])) {
      return fail(Errc::kInvalidArgument, "memory regions at {:#x} and {:#x} overlap (guest)",
                  regions[i - 1].guest_addr, regions[i].guest_addr);
    }
  }
  std::vector<const Region*> by_user;
  by_user.reserve(regions.size());
  for (const auto& r : regions) by_user.push_back(&r);
  std::sort(by_user.begin(), by_user.end(),
            [](const Region* a, const Region* b) { return a->user_addr < b->user_addr; });
  for (size_t i = 1; i < by_user.size(); ++i) {
    if (by_user[i]->user_addr <= by_user[i - 1]->user_addr + (by_user[i - 1]->size - 1)) {
      return fail(Errc::kInvalidArgument, "memory regions at user {:#x} and {:#x} overlap",
                  by_user[i - 1]->user_addr, by_user[i]->user_addr);
    }
  }
  return GuestMemory(std::move(regions));
}

bool GuestMemory::poisoned() const {
  for (const auto& r : regions_)
    if (r.mapping && r.mapping->poisoned()) return true;
  return false;
}

const Region* GuestMemory::find(uint64_t guest_addr) const {
  // First region starting after guest_addr; the candidate is the one before it.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), guest_addr,
                             [](uint64_t a, const Region& r) { return a < r.guest_addr; });
  if (it == regions_.begin()) return nullptr;
  --it;
  if (guest_addr > region_last(*it)) return nullptr;
  return &*it;
}

template <typename Fn>
Status GuestMemory::for_each_chunk(GuestAddr addr, uint64_t len, Fn&& fn) const {
  if (len == 0) return {};
  // TRUST: addr and len are driver-controlled; check the whole range first.
  if (!last_byte(addr.value, len)) {
    return fail(Errc::kOverflow, "guest range {:#x}+{:#x} wraps", addr.value, len);
  }
  uint64_t cur = addr.value;
  uint64_t left = len;
  while (left > 0) {
    const Region* r = find(cur);
    if (r == nullptr) {
      return fail(Errc::kOutOfRange, "guest range {:#x}+{:#x}: {:#x} is not in guest memory",
                  addr.value, len, cur);
    }
    const uint64_t avail_in_region = region_last(*r) - cur + 1;  // >= 1, may be 2^64 only if r spans all
    const uint64_t n = avail_in_region == 0 ? left : std::min(left, avail_in_region);
    fn(r->host + (cur - r->guest_addr), n);
    left -= n;
    cur += n;  // cannot wrap past the checked last byte unless left == 0
  }
  return {};
}

Status GuestMemory::check(GuestAddr addr, uint64_t len) const {
  return for_each_chunk(addr, len, [](uint8_t*, uint64_t) {});
}

Status GuestMemory::translate(GuestAddr addr, uint64_t len, std::vector<iovec>& out) const {
  const size_t old_size = out.size();
  auto st = for_each_chunk(addr, len, [&](uint8_t* p, uint64_t n) {
    out.push_back(iovec{p, static_cast<size_t>(n)});
  });
  if (!st) out.resize(old_size);  // nothing appended on failure
  return st;
}

Result<uint8_t*> GuestMemory::contiguous(GuestAddr addr, uint64_t len) const {
  const Region* r = find(addr.value);
  if (r == nullptr) return fail(Errc::kOutOfRange, "guest address {:#x} is not in guest memory", addr.value);
  if (len > 0) {
    auto last = last_byte(addr.value, len);
    if (!last) return fail(Errc::kOverflow, "guest range {:#x}+{:#x} wraps", addr.value, len);
    if (*last > region_last(*r)) {
      return fail(Errc::kOutOfRange, "guest range {:#x}+{:#x} is not inside one memory region",
                  addr.value, len);
    }
  }
  return r->host + (addr.value - r->guest_addr);
}

Result<GuestAddr> GuestMemory::user_to_guest(uint64_t user_addr) const {
  for (const auto& r : regions_) {
    if (user_addr >= r.user_addr && user_addr - r.user_addr < r.size) {
      return GuestAddr{r.guest_addr + (user_addr - r.user_addr)};
    }
  }
  return fail(Errc::kOutOfRange, "user address {:#x} is not in any memory region", user_addr);
}

Status GuestMemory::read(GuestAddr addr, std::span<uint8_t> dst) const {
  // Check first so that nothing is copied for a bad range.
  ICEBLK_TRY(check(addr, dst.size()));
  size_t off = 0;
  return for_each_chunk(addr, dst.size(), [&](uint8_t* p, uint64_t n) {
    std::memcpy(dst.data() + off, p, static_cast<size_t>(n));
    off += static_cast<size_t>(n);
  });
}

Status GuestMemory::write(GuestAddr addr, std::span<const uint8_t> src) const {
  ICEBLK_TRY(check(addr, src.size()));
  size_t off = 0;
  return for_each_chunk(addr, src.size(), [&](uint8_t* p, uint64_t n) {
    std::memcpy(p, src.data() + off, static_cast<size_t>(n));
    off += static_cast<size_t>(n);
  });
}

// ---------------------------------------------------------------------------

namespace {

// Copies between `buf` and bytes [off, off + buf.size()) of `iov`.
template <bool kToIov, typename Byte>
size_t iov_copy(std::span<const iovec> iov, uint64_t off, std::span<Byte> buf) {
  size_t done = 0;
  for (const auto& v : iov) {
    if (done == buf.size()) break;
    if (off >= v.iov_len) {
      off -= v.iov_len;
      continue;
    }
    const size_t n = std::min<size_t>(v.iov_len - off, buf.size() - done);
    auto* p = static_cast<uint8_t*>(v.iov_base) + off;
    if (n > 0) {
      if constexpr (kToIov) {
        std::memcpy(p, buf.data() + done, n);
      } else {
        std::memcpy(buf.data() + done, p, n);
      }
    }
    done += n;
    off = 0;
  }
  return done;
}

}  // namespace

size_t copy_from_iovecs(std::span<const iovec> iov, std::span<uint8_t> dst, uint64_t off) {
  return iov_copy<false>(iov, off, dst);
}

size_t copy_to_iovecs(std::span<const iovec> iov, std::span<const uint8_t> src, uint64_t off) {
  return iov_copy<true>(iov, off, src);
}

}  // namespace iceblk::memory
