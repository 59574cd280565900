// The virtio-blk + ICE request parser: one validated descriptor chain in, one typed
// Request out (or an Error that maps to a status byte). All request checks live
// here, in parse_request(); execution (queue_processor.h) trusts its output.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "base/result.h"
#include "base/strong_types.h"
#include "ice/crypto_mode.h"
#include "ice/engine.h"
#include "ice/key.h"
#include "memory/guest_memory.h"
#include "virtio/split_queue.h"

namespace iceblk::blk {

enum class RequestKind : uint8_t {
  kIn,
  kOut,
  kFlush,
  kGetId,
  kDiscard,
  kWriteZeroes,
  kGetCryptoCaps,
  kProgramKey,
  kEvictKey,
};

// A byte range of the medium (DISCARD / WRITE_ZEROES segment), already checked.
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool unmap = false;  // WRITE_ZEROES: the device may deallocate
};

// A parsed, validated request. Host pointers point into guest memory and stay
// valid as long as the GuestMemory snapshot the chain was parsed against lives.
struct Request {
  RequestKind kind = RequestKind::kFlush;
  uint16_t head = 0;
  uint8_t* status = nullptr;  // host address of the status byte

  // IN / OUT: byte offset and length on the medium, data buffers in guest memory.
  // GET_ID / GET_CRYPTO_CAPABILITIES: `data` is the device-writable buffer and
  // `length` its size (status byte excluded).
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<iovec> data;

  // Encrypted IN / OUT (activate = 1): the key the slot held when the request was
  // parsed (spec §6: later reprogramming does not affect this request), and the DUN
  // of its first data unit. Null for plain I/O.
  std::shared_ptr<const ice::ProgrammedKey> key;
  Dun first_dun{0};

  // DISCARD / WRITE_ZEROES.
  std::vector<ByteRange> ranges;

  // ICE_PROGRAM_KEY / ICE_EVICT_KEY: the physical slot, and the key to program.
  PhysSlot slot{0};
  std::optional<ice::Key> new_key;

  // Back to a default Request, keeping the vectors' capacity (a reused request
  // state allocates nothing for its iovecs once warmed up).
  void reset() {
    kind = RequestKind::kFlush;
    head = 0;
    status = nullptr;
    offset = length = 0;
    data.clear();
    key.reset();
    first_dun = Dun(0);
    ranges.clear();
    slot = PhysSlot(0);
    new_key.reset();
  }

  [[nodiscard]] bool encrypted() const { return key != nullptr; }
  // DUN of the data unit at byte `off` of the request (encrypted only). No overflow:
  // the parser checked that first_dun + units - 1 fits 64 bits.
  [[nodiscard]] Dun dun_at(uint64_t off) const {
    return Dun(first_dun.value + off / key->key.mode().data_unit_size);
  }
};

// Everything the parser needs to know about the device, fixed once features are
// negotiated (BlkDevice::parse_env()).
struct ParseEnv {
  uint64_t features = 0;  // negotiated
  uint64_t capacity_sectors = 0;
  bool read_only = false;
  uint32_t max_discard_sectors = 0;
  uint32_t max_discard_seg = 0;
  uint32_t max_write_zeroes_sectors = 0;
  uint32_t max_write_zeroes_seg = 0;
  // ICE (null engine = not offered). `slots` is this VM's physical range.
  const ice::Engine* engine = nullptr;
  ice::SlotRange slots;
  const std::vector<ice::Capability>* caps = nullptr;
};

// The status byte: the last byte of the last device-writable descriptor (VIRTIO
// 1.3 §5.2.6). Errors (kProtocol) when the chain has no writable descriptor or the
// last one is empty: the request cannot be answered and is completed with length 0.
Result<uint8_t*> locate_status(const virtio::DescriptorChain& chain, const memory::GuestMemory& mem);

// Parses and validates one request. Checks, in order (the first failure decides the
// status; see status_for()):
//
//  1. A status byte exists (locate_status)                      -> kProtocol (no reply)
//  2. The readable bytes hold the whole header: 16 bytes, or 32 when VIRTIO_BLK_F_ICE
//     is negotiated (spec §3); the header may be split across descriptors anyhow
//     ("any layout") and is copied out of guest memory once      -> IOERR
//  3. The type is known and its feature is negotiated (spec §4: 28 needs bit 22;
//     29/31 need bit 23; DISCARD / WRITE_ZEROES need their bits)  -> UNSUPP
//  4. IN/OUT with ICE: activate is 0 or 1, reserved1/reserved2 are 0 (spec §5)
//                                                                -> UNSUPP
//  5. IN/OUT: OUT on a read-only device (VIRTIO §5.2.6.2); data length a multiple of
//     512; sector*512 + length within capacity (checked maths)   -> IOERR
//  6. Encrypted IN/OUT (activate = 1, spec §5): slot in range (out-of-band:
//     physical slot in [slot_offset, slot_offset + max_slots); in-band: virtual slot
//     < max_slots); slot holds a key; sector*512 and length multiples of the key's
//     data unit size; first DUN + units - 1 fits 64 bits        -> IOERR
//  7. DISCARD / WRITE_ZEROES (VIRTIO §5.2.6): not read-only (IOERR); segment bytes a
//     non-zero multiple of 16 and at most max_*_seg segments (IOERR); flags: only
//     UNMAP, and not on DISCARD (UNSUPP, checked for all segments before ranges);
//     num_sectors <= max_*_sectors and range within capacity     -> IOERR
//  8. GET_CRYPTO_CAPABILITIES: writable buffer >= capability_num * 4 (spec §4.1)
//                                                                -> IOERR
//  9. ICE_PROGRAM_KEY (spec §6): virtual slot < max_slots (IOERR); data exactly 136
//     bytes (IOERR); the blob rules of ice::parse_key_blob (triple
//     advertised and key_type 0 -> UNSUPP; reserved, key_len, unused tail, XTS
//     halves -> IOERR). The blob copy is zeroised after parsing.
// 10. ICE_EVICT_KEY (spec §6): virtual slot < max_slots          -> IOERR
//
// TRUST: every byte of the chain is driver-controlled; guest memory is copied once
// (header, segments, key blob) and never re-read.
Result<Request> parse_request(const virtio::DescriptorChain& chain, const memory::GuestMemory& mem,
                              const ParseEnv& env);
// The same with check 1 done by the caller: `status` is locate_status(chain, mem)
// (the queue processor locates it once, and answers refused requests through it).
Result<Request> parse_request(const virtio::DescriptorChain& chain, const memory::GuestMemory& mem,
                              const ParseEnv& env, uint8_t* status);

// The same into `r` (reset first; its vectors' capacity is reused). On an error `r`
// holds a partial request: discard it.
Status parse_request_into(Request& r, const virtio::DescriptorChain& chain, const memory::GuestMemory& mem,
                          const ParseEnv& env, uint8_t* status);

// The one mapping from errors to VIRTIO_BLK_S_*: kUnsupported -> UNSUPP, every
// other error -> IOERR.
uint8_t status_for(const Error& e);


}  // namespace iceblk::blk
