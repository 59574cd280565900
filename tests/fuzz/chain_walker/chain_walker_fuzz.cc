// libFuzzer target for the split-virtqueue chain walker (src/virtio/split_queue.cc).
//
// Input layout (all little-endian):
//   [0]    queue size = 1 << (b0 % 9)  (1..256)
//   [1]    bit0 EVENT_IDX, bit1 INDIRECT_DESC, bit2 split memory into two regions,
//          bit3 leave a 4 KiB guest-address gap between the two regions
//   [2..3] next_avail the device starts from
//   [4..5] split offset (bytes into the memory image where region 2 starts)
//   [6..7] completion pattern (which popped chains are completed in reverse order)
//   [8..]  guest memory image at guest address kBase: descriptor table at kBase,
//          avail ring right after it, used ring after that (4-aligned); the rest is
//          data. The image is zero-padded so that the rings always fit.
// The target activates a SplitQueue and pops every chain, touching each accepted
// segment through GuestMemory (ASan checks every byte), completing every chain
// (BadChains with length 0) and exercising the notification paths.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "memory/guest_memory.h"
#include "virtio/ring_layout.h"
#include "virtio/split_queue.h"

namespace {

using iceblk::GuestAddr;
using namespace iceblk::virtio;
using iceblk::memory::GuestMemory;
using iceblk::memory::Region;

constexpr uint64_t kBase = 0x10000;
constexpr size_t kHeader = 8;

uint16_t le16_at(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  const auto qsize = static_cast<uint16_t>(1u << (data[0] % 9));
  const uint8_t flags = data[1];
  const uint16_t next_avail = le16_at(data + 2);
  const uint16_t split = le16_at(data + 4);
  const uint16_t pattern = le16_at(data + 6);

  const uint64_t desc_off = 0;
  const uint64_t avail_off = desc_table_bytes(qsize);
  const uint64_t used_off = (avail_off + avail_ring_bytes(qsize) + 3) & ~uint64_t{3};
  const uint64_t rings_end = used_off + used_ring_bytes(qsize);

  // 16-byte aligned image (a vector of uint64_t), at least as large as the rings.
  const size_t image_len = std::max<size_t>(size - kHeader, rings_end);
  std::vector<uint64_t> storage((image_len + 7) / 8, 0);
  auto* image = reinterpret_cast<uint8_t*>(storage.data());
  std::memcpy(image, data + kHeader, size - kHeader);

  std::vector<Region> regions;
  Region r1;
  r1.guest_addr = kBase;
  r1.user_addr = 0x7f0000000000;
  r1.host = image;
  r1.size = image_len;
  if ((flags & 4) && split > 0 && split < image_len) {
    r1.size = split;
    Region r2;
    r2.guest_addr = kBase + split + ((flags & 8) ? 0x1000 : 0);
    r2.user_addr = 0x7f1000000000;
    r2.host = image + split;
    r2.size = image_len - split;
    regions.push_back(r2);
  }
  regions.push_back(r1);
  auto gm = GuestMemory::create(std::move(regions));
  if (!gm) __builtin_trap();  // our own construction: must be valid
  auto mem = std::make_shared<const GuestMemory>(std::move(*gm));

  QueueConfig cfg;
  cfg.size = qsize;
  cfg.desc = GuestAddr{kBase + desc_off};
  cfg.avail = GuestAddr{kBase + avail_off};
  cfg.used = GuestAddr{kBase + used_off};
  cfg.event_idx = (flags & 1) != 0;
  cfg.indirect = (flags & 2) != 0;
  auto q = SplitQueue::activate(cfg, mem, next_avail);
  if (!q) return 0;  // rings split across regions or in the gap

  std::vector<uint16_t> pending;
  std::vector<uint8_t> scratch;
  std::vector<iovec> iov;
  // At most `size` chains can be available; bound the loop anyway.
  for (unsigned i = 0; i <= 2u * qsize + 2; ++i) {
    auto r = q->pop();
    if (!r || !r->has_value()) break;
    if (auto* bad = std::get_if<BadChain>(&**r)) {
      if (bad->head >= qsize) __builtin_trap();
      if (!q->push_used(bad->head, 0)) __builtin_trap();
      continue;
    }
    auto& c = std::get<DescriptorChain>(**r);
    if (c.head >= qsize) __builtin_trap();
    uint64_t rl = 0, wl = 0;
    for (const auto& s : c.readable) {
      rl += s.len;
      iov.clear();
      // The walker checked every segment: translation must succeed.
      if (!mem->translate(s.addr, s.len, iov)) __builtin_trap();
      scratch.resize(s.len);
      if (iceblk::memory::copy_from_iovecs(iov, scratch) != s.len) __builtin_trap();
    }
    for (const auto& s : c.writable) {
      wl += s.len;
      iov.clear();
      if (!mem->translate(s.addr, s.len, iov)) __builtin_trap();
      scratch.assign(std::min<size_t>(s.len, 64), 0xa5);
      (void)iceblk::memory::copy_to_iovecs(iov, scratch);
    }
    if (rl != c.readable_len || wl != c.writable_len || wl > UINT32_MAX || rl > UINT32_MAX) __builtin_trap();
    pending.push_back(c.head);
    if (pattern & (1u << (i % 16))) {
      for (auto it = pending.rbegin(); it != pending.rend(); ++it) {
        if (!q->push_used(*it, static_cast<uint32_t>(wl))) __builtin_trap();
      }
      pending.clear();
      (void)q->should_notify();
    }
  }
  for (uint16_t h : pending) {
    if (!q->push_used(h, 0)) __builtin_trap();
  }
  (void)q->should_notify();
  q->enable_notifications();
  (void)q->pop();
  q->disable_notifications();
  return 0;
}
