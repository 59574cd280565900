#include "virtio/inflight.h"

#include <algorithm>
#include <cstring>

namespace iceblk::virtio {

namespace {

template <typename T>
T load(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
void store(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

}  // namespace

Result<InflightQueue::Recovery> InflightQueue::recover(uint16_t used_idx) {
  Recovery out;
  InflightQueueHeader* h = header();
  if (load(&h->version) == 0) {
    // A region fresh from GET_INFLIGHT_FD (or a new front-end's): start clean.
    for (uint16_t i = 0; i < size_; ++i) {
      store(&desc(i)->inflight, uint8_t{0});
      store(&desc(i)->counter, uint64_t{0});
    }
    store(&h->desc_num, size_);
    store(&h->last_batch_head, uint16_t{0});
    store(&h->used_idx, used_idx);
    store(&h->version, kInflightVersion);
    out.fresh = true;
    out.next_avail = used_idx;
    return out;
  }
  // TRUST: the front-end can have written anything here.
  const uint16_t version = load(&h->version);
  if (version != kInflightVersion) {
    return fail(Errc::kInvalidArgument, "inflight region version {} (expected {})", version,
                kInflightVersion);
  }
  const uint16_t desc_num = load(&h->desc_num);
  if (desc_num != size_) {
    return fail(Errc::kInvalidArgument,
                "inflight region describes {} descriptors but the ring has {}", desc_num, size_);
  }
  if (load(&h->used_idx) != used_idx) {
    // The crash hit between publishing a completion and clearing its flag.
    const uint16_t last = load(&h->last_batch_head);
    if (last >= size_) {
      return fail(Errc::kInvalidArgument, "inflight region last_batch_head {} >= ring size {}",
                  last, size_);
    }
    store(&desc(last)->inflight, uint8_t{0});
    store(&h->used_idx, used_idx);
  }
  struct Entry {
    uint64_t counter;
    uint16_t head;
  };
  std::vector<Entry> inflight;
  for (uint16_t i = 0; i < size_; ++i) {
    const uint8_t f = load(&desc(i)->inflight);
    if (f > 1)
      return fail(Errc::kInvalidArgument, "inflight region: descriptor {} flag {} (must be 0 or 1)",
                  i, f);
    if (f == 1) inflight.push_back(Entry{load(&desc(i)->counter), i});
  }
  std::stable_sort(inflight.begin(), inflight.end(),
                   [](const Entry& a, const Entry& b) { return a.counter < b.counter; });
  out.resubmit.reserve(inflight.size());
  for (const auto& e : inflight) out.resubmit.push_back(e.head);
  // New requests are counted after every recovered one.
  counter_ = inflight.empty() ? 0 : inflight.back().counter + 1;
  out.next_avail = static_cast<uint16_t>(used_idx + inflight.size());
  return out;
}

void InflightQueue::mark(uint16_t head) {
  store(&desc(head)->counter, counter_++);
  store(&desc(head)->inflight, uint8_t{1});
}

void InflightQueue::before_publish(uint16_t head) {
  store(&header()->last_batch_head, head);
}

void InflightQueue::after_publish(uint16_t head, uint16_t used_idx) {
  store(&desc(head)->inflight, uint8_t{0});
  store(&header()->used_idx, used_idx);
}

}  // namespace iceblk::virtio
