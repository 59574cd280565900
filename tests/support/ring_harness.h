// Shared test helpers: a driver-side ring (DriverMemory + DriverQueue) connected to
// a device-side SplitQueue in the same process. The device side maps the driver's
// memfd a second time (Mapping::map_fd), so it goes through a real shared mmap just
// as iceblkd does with a vhost-user memory table.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/result.h"
#include "base/strong_types.h"
#include "virtio/driver_queue.h"
#include "memory/guest_memory.h"
#include "virtio/split_queue.h"

namespace iceblk::test {

// Device-side view of `dm`: one region, same guest address, user_addr == guest
// address, host pointer from a fresh mmap of dm.fd().
Result<std::shared_ptr<const memory::GuestMemory>> device_memory_for(const virtio::DriverMemory& dm);

struct RingOptions {
  uint16_t size = 16;
  bool event_idx = false;
  bool indirect = false;
  uint64_t mem_size = uint64_t{1} << 20;
  uint64_t guest_base = 0x100000;
  uint16_t start_index = 0;  // all ring indexes start here (wrap-around tests)
};

class RingHarness {
 public:
  static Result<std::unique_ptr<RingHarness>> create(const RingOptions& opt = {});

  [[nodiscard]] virtio::DriverMemory& mem() { return *mem_; }
  [[nodiscard]] const std::shared_ptr<virtio::DriverMemory>& mem_ptr() const { return mem_; }
  [[nodiscard]] virtio::DriverQueue& driver() { return *driver_; }
  [[nodiscard]] virtio::SplitQueue& device() { return *device_; }
  [[nodiscard]] const std::shared_ptr<const memory::GuestMemory>& guest() const { return guest_; }

  // Allocate `len` bytes of driver memory filled with `fill` (no alignment needs).
  Result<GuestAddr> alloc(uint64_t len, uint8_t fill = 0, uint64_t align = 64);
  // Allocate and copy `bytes` in.
  Result<GuestAddr> alloc_bytes(std::span<const uint8_t> bytes, uint64_t align = 64);
  // Driver-side view of [a, a + len); empty span if outside.
  std::span<uint8_t> bytes(GuestAddr a, uint64_t len);

  // Write an indirect descriptor table (entries of 16 bytes) at a fresh allocation.
  struct RawDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };
  Result<GuestAddr> write_indirect_table(std::span<const RawDesc> descs);

 private:
  RingHarness() = default;
  std::shared_ptr<virtio::DriverMemory> mem_;
  std::unique_ptr<virtio::DriverQueue> driver_;
  std::shared_ptr<const memory::GuestMemory> guest_;
  std::unique_ptr<virtio::SplitQueue> device_;
};

}  // namespace iceblk::test
