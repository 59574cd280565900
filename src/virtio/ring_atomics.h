// Atomic access to the 16-bit ring fields both halves share (avail/used idx, flags,
// event indices). The memory is shared with the other side, which may change it at
// any time: every access is a single atomic load or store, with the ordering named
// at each call site (see the ORDER: comments in split_queue.cc / driver_queue.cc).
//
// ThreadSanitizer: the acquire loads and release stores also acquire / release the
// shared file's sync key for the field (memory/tsan_shared_memory.h), so the order
// they give holds across the driver's and the device's mappings of the same ring;
// full_fence() is the one standalone fence the rings need. Without TSan both add
// nothing to the loads, stores and fence.
#pragma once

#include <cstdint>

#include "memory/tsan_shared_memory.h"

namespace iceblk::virtio {

// `p` points into a mapped ring (2-byte aligned by the ring layout, VIRTIO 1.3 §2.7).
inline uint16_t load16(const uint8_t* p, int order) {
  const uint16_t v = __atomic_load_n(reinterpret_cast<const uint16_t*>(p), order);
  if (ICEBLK_TSAN && (order == __ATOMIC_ACQUIRE || order == __ATOMIC_SEQ_CST))
    memory::tsan::acquire(p);
  return v;
}
inline void store16(uint8_t* p, uint16_t v, int order) {
  if (ICEBLK_TSAN && (order == __ATOMIC_RELEASE || order == __ATOMIC_SEQ_CST))
    memory::tsan::release(p);
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, order);
}

// ORDER: a full (store-load) fence between publishing a ring field and reading the
// other side's (the event-index handshake, §2.7.10; see the call sites). TSan does
// not model standalone fences (gcc warns -Wtsan); it does not need to here, since
// the fence orders only atomic ring fields, never plain data TSan checks.
inline void full_fence() {
#if ICEBLK_TSAN && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtsan"
#endif
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#if ICEBLK_TSAN && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
}

}  // namespace iceblk::virtio
