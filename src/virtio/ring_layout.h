// Split virtqueue memory layout (VIRTIO 1.3 §2.7.5, §2.7.6, §2.7.8), shared by the
// device side (SplitQueue) and the driver side (driver::DriverQueue).
//
//   desc:  struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; } [size]
//   avail: le16 flags; le16 idx; le16 ring[size]; le16 used_event;   (EVENT_IDX)
//   used:  le16 flags; le16 idx; { le32 id; le32 len; } ring[size]; le16 avail_event;
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/le.h"

namespace iceblk::virtio {

// Values of <linux/virtio_ring.h> (not includable from C++: its inline vring_init
// converts void*), VIRTIO 1.3 §2.7.5, §2.7.6, §2.7.8.
inline constexpr uint16_t kDescFNext = 1;          // VRING_DESC_F_NEXT
inline constexpr uint16_t kDescFWrite = 2;         // VRING_DESC_F_WRITE
inline constexpr uint16_t kDescFIndirect = 4;      // VRING_DESC_F_INDIRECT
inline constexpr uint16_t kUsedFNoNotify = 1;      // VRING_USED_F_NO_NOTIFY
inline constexpr uint16_t kAvailFNoInterrupt = 1;  // VRING_AVAIL_F_NO_INTERRUPT

inline constexpr uint64_t kDescAlign = 16;  // VRING_DESC_ALIGN_SIZE
inline constexpr uint64_t kAvailAlign = 2;  // VRING_AVAIL_ALIGN_SIZE
inline constexpr uint64_t kUsedAlign = 4;   // VRING_USED_ALIGN_SIZE

struct VirtqDesc {
  le64 addr;
  le32 len;
  le16 flags;
  le16 next;
};
static_assert(sizeof(VirtqDesc) == 16);
static_assert(offsetof(VirtqDesc, len) == 8 && offsetof(VirtqDesc, flags) == 12 &&
              offsetof(VirtqDesc, next) == 14);

struct VirtqUsedElem {
  le32 id;
  le32 len;
};
static_assert(sizeof(VirtqUsedElem) == 8);

// Byte offsets inside each ring.
inline constexpr uint64_t kRingFlagsOff = 0;
inline constexpr uint64_t kRingIdxOff = 2;
inline constexpr uint64_t kRingEntriesOff = 4;

inline constexpr uint64_t desc_table_bytes(uint16_t size) { return uint64_t{16} * size; }
inline constexpr uint64_t avail_ring_entry_off(uint16_t i) { return kRingEntriesOff + uint64_t{2} * i; }
inline constexpr uint64_t avail_used_event_off(uint16_t size) { return kRingEntriesOff + uint64_t{2} * size; }
// Includes used_event (always reserved; only accessed with EVENT_IDX).
inline constexpr uint64_t avail_ring_bytes(uint16_t size) { return avail_used_event_off(size) + 2; }
inline constexpr uint64_t used_ring_entry_off(uint16_t i) { return kRingEntriesOff + uint64_t{8} * i; }
inline constexpr uint64_t used_avail_event_off(uint16_t size) { return kRingEntriesOff + uint64_t{8} * size; }
inline constexpr uint64_t used_ring_bytes(uint16_t size) { return used_avail_event_off(size) + 2; }

// VIRTIO 1.3 §2.7.10 / Linux vring_need_event: notify iff new_idx has moved past
// event_idx since old (all mod 2^16).
inline constexpr bool vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old);
}

}  // namespace iceblk::virtio
