// Atomic access to the 16-bit ring fields both halves share (avail/used idx, flags,
// event indices). The memory is shared with the other side, which may change it at
// any time: every access is a single atomic load or store, with the ordering named
// at each call site (see the ORDER: comments in split_queue.cc / driver_queue.cc).
#pragma once

#include <cstdint>

namespace iceblk::virtio {

// `p` points into a mapped ring (2-byte aligned by the ring layout, VIRTIO 1.3 §2.7).
inline uint16_t load16(const uint8_t* p, int order) {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), order);
}
inline void store16(uint8_t* p, uint16_t v, int order) { __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, order); }

}  // namespace iceblk::virtio
