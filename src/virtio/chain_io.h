// Reading and writing the buffers of a walked descriptor chain (after crosvm's
// virtio Reader/Writer). A ChainBytes is one direction of a chain - its readable or
// its writable segments - seen as one stream of bytes; split_at() cuts it, e.g. the
// request header off the front of the readable side, or the status byte off the
// end of the writable side (VIRTIO 1.3 §5.2.6):
//
//   auto [data, status] = writable(chain).split_at(writable(chain).size() - 1);
//
// A view holds the chain's segment list by reference: it must not outlive the chain.
//
// TRUST: the segments were checked by the chain walker to lie in guest memory; each
// access translates them again against the memory snapshot it is given (the table
// may have changed since), and read() copies guest bytes out exactly once.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "base/result.h"
#include "memory/guest_memory.h"
#include "virtio/split_queue.h"

namespace iceblk::virtio {

class ChainBytes {
 public:
  ChainBytes() = default;
  explicit ChainBytes(std::span<const Segment> segs);

  [[nodiscard]] uint64_t size() const { return len_; }
  [[nodiscard]] bool empty() const { return len_ == 0; }

  // Bytes [0, n) and [n, size()); n is clamped to size().
  [[nodiscard]] std::pair<ChainBytes, ChainBytes> split_at(uint64_t n) const;

  // Appends host iovecs for every byte of the view (split at region boundaries).
  Status iovecs(const memory::GuestMemory& mem, std::vector<iovec>& out) const;
  // Copies the first dst.size() bytes out of guest memory (kOutOfRange if shorter).
  Status read(const memory::GuestMemory& mem, std::span<uint8_t> dst) const;
  // Host address of the view's single byte (status bytes): kProtocol unless size() == 1.
  Result<uint8_t*> byte(const memory::GuestMemory& mem) const;

 private:
  std::span<const Segment> segs_;
  uint64_t off_ = 0;  // into the concatenation of segs_
  uint64_t len_ = 0;
};

inline ChainBytes readable(const DescriptorChain& c) { return ChainBytes(c.readable); }
inline ChainBytes writable(const DescriptorChain& c) { return ChainBytes(c.writable); }

}  // namespace iceblk::virtio
