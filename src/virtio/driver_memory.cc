#include <fcntl.h>
#include "virtio/driver_queue.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "base/checked.h"
#include "base/le.h"
#include "base/log.h"
#include "virtio/ring_atomics.h"
#include "virtio/ring_layout.h"

namespace iceblk::virtio {

// ---------------------------------------------------------------------------
// DriverMemory

struct DriverMemory::Impl {
  UniqueFd fd;
  std::shared_ptr<memory::Mapping> map;
  uint64_t size = 0;
  uint64_t guest_base = 0;
  std::mutex mu;
  std::map<uint64_t, uint64_t> free_blocks;           // offset -> length, coalesced
  std::unordered_map<uint64_t, uint64_t> allocated;  // offset -> length
};

Result<std::shared_ptr<DriverMemory>> DriverMemory::create(uint64_t size, uint64_t guest_base) {
  if (size == 0) return fail(Errc::kInvalidArgument, "driver memory size 0");
  if (!checked_add(guest_base, size)) {
    return fail(Errc::kOverflow, "driver memory {:#x}+{:#x} wraps", guest_base, size);
  }
  UniqueFd fd(::memfd_create("iceblk-guest-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return fail(errno_error(Errc::kIo, "memfd_create", errno));
  if (size > static_cast<uint64_t>(INT64_MAX) || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return fail(errno_error(Errc::kIo, "ftruncate", errno));
  }
  // Sealed as QEMU's memory-backend-memfd seals guest RAM: a device may then map it
  // without fearing that it shrinks (iceblkd refuses unsealed memory by default).
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return fail(errno_error(Errc::kIo, "F_ADD_SEALS", errno));
  }
  ICEBLK_ASSIGN_OR_RETURN(auto map, memory::Mapping::map_fd(fd.get(), 0, size));
  auto m = std::shared_ptr<DriverMemory>(new DriverMemory());
  m->impl_ = std::make_unique<Impl>();
  m->impl_->fd = std::move(fd);
  m->impl_->map = std::move(map);
  m->impl_->size = size;
  m->impl_->guest_base = guest_base;
  m->impl_->free_blocks.emplace(0, size);
  return m;
}

DriverMemory::~DriverMemory() = default;

int DriverMemory::fd() const { return impl_->fd.get(); }
uint64_t DriverMemory::size() const { return impl_->size; }
uint64_t DriverMemory::guest_base() const { return impl_->guest_base; }

uint8_t* DriverMemory::ptr(GuestAddr a, uint64_t len) const {
  if (a.value < impl_->guest_base) return nullptr;
  const uint64_t off = a.value - impl_->guest_base;
  if (off >= impl_->size || len > impl_->size - off) return nullptr;
  return impl_->map->data() + off;
}

Result<GuestAddr> DriverMemory::alloc(uint64_t size, uint64_t align) {
  if (size == 0) return fail(Errc::kInvalidArgument, "alloc of 0 bytes");
  if (!is_power_of_two(align)) return fail(Errc::kInvalidArgument, "alignment {} is not a power of two", align);
  std::lock_guard lock(impl_->mu);
  for (auto it = impl_->free_blocks.begin(); it != impl_->free_blocks.end(); ++it) {
    const auto [off, len] = *it;
    const uint64_t start = impl_->guest_base + off;  // cannot wrap (checked in create)
    auto bumped = checked_add(start, align - 1);
    if (!bumped) continue;
    const uint64_t aligned = *bumped & ~(align - 1);
    const uint64_t pad = aligned - start;
    if (pad > len || size > len - pad) continue;
    impl_->free_blocks.erase(it);
    if (pad > 0) impl_->free_blocks.emplace(off, pad);
    const uint64_t rest = len - pad - size;
    if (rest > 0) impl_->free_blocks.emplace(off + pad + size, rest);
    impl_->allocated.emplace(off + pad, size);
    return GuestAddr{aligned};
  }
  return fail(Errc::kBusy, "driver memory exhausted ({} bytes, align {})", size, align);
}

void DriverMemory::free(GuestAddr a) {
  std::lock_guard lock(impl_->mu);
  if (a.value < impl_->guest_base) return;
  const uint64_t off = a.value - impl_->guest_base;
  auto it = impl_->allocated.find(off);
  if (it == impl_->allocated.end()) {
    spdlog::warn("DriverMemory::free of unallocated address {:#x}", a.value);
    return;
  }
  uint64_t start = off;
  uint64_t len = it->second;
  impl_->allocated.erase(it);
  auto& fb = impl_->free_blocks;
  auto next = fb.lower_bound(start);
  if (next != fb.end() && next->first == start + len) {  // merge with the following block
    len += next->second;
    next = fb.erase(next);
  }
  if (next != fb.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {  // merge with the preceding block
      start = prev->first;
      len += prev->second;
      fb.erase(prev);
    }
  }
  fb.emplace(start, len);
}

memory::Region DriverMemory::region() const {
  memory::Region r;
  r.guest_addr = impl_->guest_base;
  r.size = impl_->size;
  r.user_addr = impl_->guest_base;
  r.host = impl_->map->data();
  r.mapping = impl_->map;
  return r;
}

}  // namespace iceblk::virtio
