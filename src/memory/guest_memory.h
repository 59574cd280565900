// Guest memory as the device sees it: regions (guest address, size, front-end
// user address, host mapping) from the vhost-user memory table, and translation
// of guest (address, length) ranges into host iovecs.
//
// TRUST: every address and length here comes from the driver. translate() checks
// the whole range with overflow-checked arithmetic and splits it across regions or
// rejects it. Guest memory may change under us at any time: read_obj() copies
// once (no double fetch), and nothing hands out typed pointers into guest memory.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/result.h"
#include "base/strong_types.h"
#include "base/unique_fd.h"

namespace iceblk::memory {

// An mmap'ed region of guest memory (owns the mapping).
class Mapping {
 public:
  // kContainFaults: the file comes from a peer that may shrink it; register the
  // mapping with the SIGBUS guard (memory/fault_guard.h), so that touching its cut
  // pages poisons it instead of killing the process.
  enum class Faults { kFatal, kContain };
  // mmap(fd, offset, size) shared read/write.
  static Result<std::shared_ptr<Mapping>> map_fd(int fd, uint64_t mmap_offset, uint64_t size,
                                                 Faults faults = Faults::kFatal);
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  [[nodiscard]] uint8_t* data() const { return data_; }
  [[nodiscard]] uint64_t size() const { return size_; }
  // A contained SIGBUS hit this mapping: the file shrank (or a hugetlbfs file ran out
  // of huge pages) under us. Part of it now reads as zeros; it never recovers.
  [[nodiscard]] bool poisoned() const;

 private:
  static constexpr uint32_t kNoGuard = UINT32_MAX;
  Mapping(void* base, uint64_t map_len, uint8_t* data, uint64_t size, uint32_t guard)
      : base_(base), map_len_(map_len), data_(data), size_(size), guard_(guard) {}
  void* base_;
  uint64_t map_len_;
  uint8_t* data_;
  uint64_t size_;
  uint32_t guard_;  // fault_guard registration, or kNoGuard
};

// `mapping` may be null when the caller keeps `host` alive itself (tests, fuzzing).
struct Region {
  uint64_t guest_addr = 0;  // guest-physical start
  uint64_t size = 0;
  uint64_t user_addr = 0;   // front-end virtual address of the same memory
  uint8_t* host = nullptr;  // our mapping of it
  std::shared_ptr<Mapping> mapping;  // keeps `host` alive
};

// An immutable snapshot of the memory table. The vhost-user session builds a new
// one on every table change and publishes it (shared_ptr) to the queue workers.
class GuestMemory {
 public:
  GuestMemory() = default;
  // Regions must not overlap in guest or user address space; kInvalidArgument otherwise.
  static Result<GuestMemory> create(std::vector<Region> regions);

  [[nodiscard]] const std::vector<Region>& regions() const { return regions_; }

  // True if a region's mapping is poisoned (Mapping::poisoned): the front-end shrank
  // its memory under the device. Cheap (one atomic load per region): the request
  // path checks it before submitting data and before completing.
  [[nodiscard]] bool poisoned() const;

  // Split [addr, addr + len) into host iovecs appended to `out`. len 0 yields nothing.
  // kOutOfRange if any byte is outside guest memory, kOverflow if addr + len wraps.
  // On failure nothing is appended.
  Status translate(GuestAddr addr, uint64_t len, std::vector<iovec>& out) const;

  // Same checks as translate() without producing iovecs.
  Status check(GuestAddr addr, uint64_t len) const;

  // A host pointer to [addr, addr + len) if it lies inside one region (for rings).
  // len 0 only requires addr to be inside a region.
  Result<uint8_t*> contiguous(GuestAddr addr, uint64_t len) const;

  // Front-end virtual address -> guest address (vring addresses arrive as VAs).
  Result<GuestAddr> user_to_guest(uint64_t user_addr) const;

  // Copy guest bytes into `dst` / `src` into guest memory. The whole range is
  // checked first: nothing is copied for a bad range.
  Status read(GuestAddr addr, std::span<uint8_t> dst) const;
  Status write(GuestAddr addr, std::span<const uint8_t> src) const;

  template <typename T>
  Result<T> read_obj(GuestAddr addr) const {
    T t;
    ICEBLK_TRY(read(addr, {reinterpret_cast<uint8_t*>(&t), sizeof t}));
    return t;
  }
  template <typename T>
  Status write_obj(GuestAddr addr, const T& t) const {
    return write(addr, {reinterpret_cast<const uint8_t*>(&t), sizeof t});
  }

 private:
  explicit GuestMemory(std::vector<Region> r) : regions_(std::move(r)) {}
  const Region* find(uint64_t guest_addr) const;
  // Calls fn(host_ptr, n) for each in-region piece of a checked range.
  template <typename Fn>
  Status for_each_chunk(GuestAddr addr, uint64_t len, Fn&& fn) const;
  std::vector<Region> regions_;  // sorted by guest_addr
};

// Copy between a flat buffer and bytes [off, off + buffer) of an iovec list (the one
// copy routine for chain buffers: virtio/chain_io.h and blk use it); copies as many
// bytes as both sides have and returns that count.
size_t copy_from_iovecs(std::span<const iovec> iov, std::span<uint8_t> dst, uint64_t off = 0);
size_t copy_to_iovecs(std::span<const iovec> iov, std::span<const uint8_t> src, uint64_t off = 0);

}  // namespace iceblk::memory
