#include "support/ring_harness.h"

#include <cstring>

#include "base/le.h"
#include "virtio/ring_layout.h"

namespace iceblk::test {

Result<std::shared_ptr<const memory::GuestMemory>> device_memory_for(const virtio::DriverMemory& dm) {
  ICEBLK_ASSIGN_OR_RETURN(auto map, memory::Mapping::map_fd(dm.fd(), 0, dm.size()));
  memory::Region r;
  r.guest_addr = dm.guest_base();
  r.size = dm.size();
  r.user_addr = dm.guest_base();
  r.host = map->data();
  r.mapping = std::move(map);
  std::vector<memory::Region> regions;
  regions.push_back(std::move(r));
  ICEBLK_ASSIGN_OR_RETURN(auto gm, memory::GuestMemory::create(std::move(regions)));
  return std::make_shared<const memory::GuestMemory>(std::move(gm));
}

Result<std::unique_ptr<RingHarness>> RingHarness::create(const RingOptions& opt) {
  auto h = std::unique_ptr<RingHarness>(new RingHarness());
  ICEBLK_ASSIGN_OR_RETURN(h->mem_, virtio::DriverMemory::create(opt.mem_size, opt.guest_base));
  ICEBLK_ASSIGN_OR_RETURN(h->driver_, virtio::DriverQueue::create(h->mem_, opt.size, opt.event_idx, opt.indirect));
  if (opt.start_index != 0) h->driver_->set_start_index(opt.start_index);
  ICEBLK_ASSIGN_OR_RETURN(h->guest_, device_memory_for(*h->mem_));
  ICEBLK_ASSIGN_OR_RETURN(auto q, virtio::SplitQueue::activate(h->driver_->device_config(), h->guest_,
                                                               opt.start_index));
  h->device_ = std::make_unique<virtio::SplitQueue>(std::move(q));
  return h;
}

Result<GuestAddr> RingHarness::alloc(uint64_t len, uint8_t fill, uint64_t align) {
  ICEBLK_ASSIGN_OR_RETURN(GuestAddr a, mem_->alloc(len, align));
  std::memset(mem_->ptr(a, len), fill, len);
  return a;
}

Result<GuestAddr> RingHarness::alloc_bytes(std::span<const uint8_t> bytes, uint64_t align) {
  ICEBLK_ASSIGN_OR_RETURN(GuestAddr a, mem_->alloc(bytes.empty() ? 1 : bytes.size(), align));
  if (!bytes.empty()) std::memcpy(mem_->ptr(a, bytes.size()), bytes.data(), bytes.size());
  return a;
}

std::span<uint8_t> RingHarness::bytes(GuestAddr a, uint64_t len) {
  uint8_t* p = mem_->ptr(a, len);
  if (p == nullptr) return {};
  return {p, static_cast<size_t>(len)};
}

Result<GuestAddr> RingHarness::write_indirect_table(std::span<const RawDesc> descs) {
  const uint64_t bytes_len = uint64_t{16} * (descs.empty() ? 1 : descs.size());
  ICEBLK_ASSIGN_OR_RETURN(GuestAddr a, alloc(bytes_len, 0, 16));
  uint8_t* p = mem_->ptr(a, bytes_len);
  for (size_t i = 0; i < descs.size(); ++i) {
    const virtio::VirtqDesc d{le64(descs[i].addr), le32(descs[i].len), le16(descs[i].flags),
                              le16(descs[i].next)};
    std::memcpy(p + 16 * i, &d, sizeof d);
  }
  return a;
}

}  // namespace iceblk::test
