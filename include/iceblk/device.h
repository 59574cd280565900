// iceblk driver library: a userspace virtio-blk (+ ICE) driver that talks to a
// vhost-user-blk back-end (iceblkd, qemu-storage-daemon, ...) over its unix socket.
//
//   auto dev = iceblk::driver::Device::connect({.socket_path = "/run/disk.sock"});
//   (*dev)->add_key("home", {Algorithm::kAesXts, KeySize::k256, 4096}, key_bytes);
//   (*dev)->write(0, data, iceblk::driver::KeyRef{"home", /*dun=*/0});
//   (*dev)->read(0, buf, iceblk::driver::KeyRef{"home", 0});
//
// What connect() does: vhost-user handshake, feature negotiation (VIRTIO_BLK_F_ICE,
// bit 22, and VIRTIO_BLK_F_ICE_INBAND_KEYS, bit 23, when offered and wanted; plain
// virtio-blk otherwise, with the 16-byte header instead of 32), guest memory in one
// memfd region shared with the back-end, N split virtqueues, the config space and
// (with ICE) the crypto capabilities.
//
// Requests: read / write / flush / discard / write-zeroes / get-id /
// get-capabilities / program-key / evict-key, plain or encrypted (raw slot + DUN,
// or a named key through the keyslot manager + DUN). Each has an asynchronous form
// (callback, or std::future) and a synchronous wrapper. Many requests may be in
// flight per queue; when a ring (or the buffer memory) is full, submission waits.
//
// Completions run on one completion thread per queue, which waits on the queue's
// call eventfd (CompletionMode::kInterrupt) or polls the used ring
// (CompletionMode::kPoll). Callbacks run on that thread: they must not block on the
// device (no synchronous calls from a callback; submitting asynchronously is fine).
//
// Keys (spec §6/§7): the KeyslotManager maps caller-named keys onto the device's
// `max_slots` virtual slots [0, max_slots), LRU, programming on demand.
//   - in-band mode (bit 23): PROGRAM_KEY / EVICT_KEY requests on queue 0, the slot
//     sent as is (the device adds slot_offset);
//   - out-of-band mode (bit 22 only): keys go through the secure-world channel
//     (ConnectOptions::secure_world_socket) to physical slot slot_offset + virtual;
//     I/O requests carry the physical slot.
// After reset() or reconnect(), in-band keys are programmed again (the device
// evicted them, spec §8); out-of-band keys survive in the secure world.
//
// Errors are iceblk::Error values (iceblk/error.h). A request the device failed maps
// its status byte: IOERR -> Errc::kIo, UNSUPP -> Errc::kUnsupported, anything else
// -> Errc::kProtocol; the message names the request ("read 4096 bytes at offset
// 8192 (queue 0, slot 3, dun 2): device returned IOERR"). A back-end that goes away
// fails every in-flight request with Errc::kClosed; a synchronous call that gets no
// completion within ConnectOptions::request_timeout fails with Errc::kTimedOut
// ("write 4096 bytes at offset 8192 (queue 0): no completion within 30000 ms"). Key bytes never appear in
// messages or logs, and request buffers that carried them are zeroised.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "iceblk/result.h"
#include "iceblk/crypto_mode.h"
#include "iceblk/key.h"
#include "iceblk/key_mode.h"

namespace iceblk::driver {

class KeyslotManager;

using iceblk::KeyMode;  // iceblk/key_mode.h
using iceblk::key_mode_name;

enum class CompletionMode { kInterrupt, kPoll };

struct ConnectOptions {
  std::string socket_path;           // the back-end's vhost-user socket
  uint16_t num_queues = 1;           // 0 = as many as the device offers
  uint16_t queue_size = 128;         // power of two, <= 32768
  uint64_t memory_size = 128 << 20;  // memfd region for rings and request buffers
  bool want_ice = true;              // negotiate bit 22 when offered
  bool want_inband_keys = true;      // negotiate bit 23 when offered (with 22)
  bool event_idx = true;             // VIRTIO_RING_F_EVENT_IDX when offered
  bool indirect = true;              // VIRTIO_RING_F_INDIRECT_DESC when offered
  CompletionMode completion = CompletionMode::kInterrupt;
  std::string secure_world_socket;   // out-of-band key channel (bit 22 without 23)
  int reply_timeout_ms = 30000;      // vhost-user replies
  // How long each synchronous call (read(), write(), ..., execute_raw(), program_key(),
  // add_key() programming, secure-world calls) waits for its completion; then it
  // fails with Errc::kTimedOut naming the request and its queue. The request is
  // abandoned: its completion, if it ever comes, no longer touches the caller's
  // buffers. 0 = wait forever. The futures of submit() are not bounded by it.
  std::chrono::milliseconds request_timeout{30000};
  // How long a key acquire waits when every slot is busy (then Errc::kBusy).
  std::chrono::milliseconds keyslot_timeout{10000};
};

// The virtio-blk config space (VIRTIO 1.3 §5.2.4 + spec §2), decoded.
struct DeviceConfig {
  uint64_t capacity_sectors = 0;
  uint32_t size_max = 0;
  uint32_t seg_max = 0;
  uint32_t blk_size = 0;
  uint8_t physical_block_exp = 0;
  uint16_t min_io_size = 0;
  uint32_t opt_io_size = 0;
  uint8_t writeback = 0;
  uint16_t num_queues = 0;
  uint32_t max_discard_sectors = 0;
  uint32_t max_discard_seg = 0;
  uint32_t discard_sector_alignment = 0;
  uint32_t max_write_zeroes_sectors = 0;
  uint32_t max_write_zeroes_seg = 0;
  uint8_t write_zeroes_may_unmap = 0;
  uint8_t max_slots = 0;       // slot_info bits 15:8
  uint8_t slot_offset = 0;     // slot_info bits 7:0
  uint16_t capability_num = 0;
  // Proposed addition (docs/protocol.md §2): changes whenever the device lost the
  // keys programmed into it (reset, daemon restart). 0 when the device has no such
  // field (fewer than 104 config bytes).
  uint32_t key_generation = 0;
  std::vector<uint8_t> raw;  // the bytes as read (104, or fewer for older devices)
};

// Raw encryption parameters: `slot` exactly as sent on the wire (virtual in in-band
// mode, physical in out-of-band mode) and the DUN of the first data unit.
struct Encryption {
  uint8_t slot = 0;
  uint64_t dun = 0;
};

// Encryption with a key registered through add_key(): the manager picks the slot.
struct KeyRef {
  std::string name;
  uint64_t dun = 0;
};

enum class Op : uint8_t { kRead, kWrite, kFlush, kDiscard, kWriteZeroes, kGetId, kGetCapabilities };
const char* op_name(Op op);

// One request for submit(). Spans must stay valid until completion.
struct Io {
  Op op = Op::kRead;
  uint16_t queue = 0;
  uint64_t offset = 0;              // bytes, multiple of 512 (read/write/discard/wz)
  uint64_t length = 0;              // bytes (discard/write-zeroes)
  std::span<uint8_t> in;            // read / get-id / get-capabilities destination
  std::span<const uint8_t> out;     // write source
  bool unmap = false;               // write-zeroes: the device may deallocate
  std::optional<Encryption> encryption;  // raw slot + DUN (read/write)
  std::optional<KeyRef> key;             // named key + DUN (read/write)
};

// A request exactly as the caller wants it on the wire (conformance tests):
// `header` is the first device-readable descriptor (not checked), `out` more
// device-readable bytes, `in` device-writable bytes, then the 1-byte status.
struct RawRequest {
  uint16_t queue = 0;
  std::vector<uint8_t> header;
  std::span<const uint8_t> out;
  std::span<uint8_t> in;
  bool secret = false;  // `out` holds key material: zeroise the driver buffers after
};
struct RawResult {
  uint8_t status = 0xff;  // the status byte the device wrote
  uint32_t used_len = 0;  // used.len: bytes the device wrote (incl. the status)
};

using Callback = std::function<void(Status)>;
using RawCallback = std::function<void(Result<RawResult>)>;

// Per-queue counters (for bench / info).
struct QueueStats {
  uint64_t submitted = 0;
  uint64_t completed = 0;
  uint64_t kicks = 0;
  uint64_t interrupts = 0;
};

class Device {
 public:
  // Connect and set everything up. Errors: kClosed / kNotFound-ish OS errors for a
  // missing socket ("connect to /x.sock: No such file or directory"), kUnsupported
  // when the back-end lacks what we need (VERSION_1, CONFIG), kInvalidArgument for
  // bad options (e.g. out-of-band mode without secure_world_socket).
  static Result<std::unique_ptr<Device>> connect(const ConnectOptions& opts);
  ~Device();  // stops the completion threads; in-flight requests fail with kClosed
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  // --- what was negotiated ---------------------------------------------------------
  [[nodiscard]] uint64_t offered_features() const;
  [[nodiscard]] uint64_t negotiated_features() const;
  [[nodiscard]] uint64_t protocol_features() const;
  [[nodiscard]] bool has_feature(unsigned bit) const;
  [[nodiscard]] bool ice() const;  // bit 22 negotiated
  [[nodiscard]] bool ice_offered() const;  // bit 22 offered (negotiated unless want_ice was false)
  [[nodiscard]] KeyMode key_mode() const;
  [[nodiscard]] uint32_t header_size() const;  // 16 or 32
  [[nodiscard]] uint16_t num_queues() const;
  [[nodiscard]] uint16_t queue_size() const;
  [[nodiscard]] const DeviceConfig& config() const;
  [[nodiscard]] uint64_t capacity_bytes() const;
  // Capabilities read at connect (empty without ICE).
  [[nodiscard]] const std::vector<ice::Capability>& capabilities() const;
  [[nodiscard]] QueueStats queue_stats(uint16_t q) const;
  // GET_CONFIG of any range (kOutOfRange when the back-end answers with size 0).
  Result<std::vector<uint8_t>> read_config(uint32_t offset, uint32_t size);

  // --- asynchronous requests -------------------------------------------------------
  // Checks the request locally first (queue index, offset/length multiples of 512,
  // the op's feature negotiated, encryption only with ICE, named key exists and its
  // data unit size divides offset and length): such errors are returned here and
  // the callback is not called. Otherwise the callback runs exactly once.
  Status submit(Io io, Callback cb);
  std::future<Status> submit(Io io);
  // Send a request verbatim (no local checks beyond the queue index).
  Status submit_raw(RawRequest req, RawCallback cb);
  Result<RawResult> execute_raw(RawRequest req);  // synchronous form

  // --- synchronous wrappers (queue `q`) ----------------------------------------------
  Status read(uint64_t offset, std::span<uint8_t> buf, uint16_t q = 0);
  Status read(uint64_t offset, std::span<uint8_t> buf, const Encryption& enc, uint16_t q = 0);
  Status read(uint64_t offset, std::span<uint8_t> buf, const KeyRef& key, uint16_t q = 0);
  Status write(uint64_t offset, std::span<const uint8_t> buf, uint16_t q = 0);
  Status write(uint64_t offset, std::span<const uint8_t> buf, const Encryption& enc, uint16_t q = 0);
  Status write(uint64_t offset, std::span<const uint8_t> buf, const KeyRef& key, uint16_t q = 0);
  Status flush(uint16_t q = 0);
  Status discard(uint64_t offset, uint64_t length, uint16_t q = 0);
  Status write_zeroes(uint64_t offset, uint64_t length, bool unmap = false, uint16_t q = 0);
  Result<std::string> get_id(uint16_t q = 0);  // serial, up to 20 bytes, NULs trimmed
  Result<std::vector<ice::Capability>> get_capabilities(uint16_t q = 0);

  // --- raw keyslots (in-band mode only: kUnsupported otherwise) ------------------------
  // PROGRAM_KEY / EVICT_KEY on virtual `slot`. Bypasses the keyslot manager: do not
  // mix with named keys on the same slots.
  Status program_key(uint8_t slot, const ice::Key& key, uint16_t q = 0);
  Status evict_key(uint8_t slot, uint16_t q = 0);

  // --- named keys (keyslot manager) ------------------------------------------------------
  // Register a key. kUnsupported without ICE or when the device does not advertise
  // the mode; kInvalidArgument for a wrong key length (message names the algorithm
  // and both lengths, never key bytes) or a duplicate name.
  Status add_key(const std::string& name, const ice::CryptoMode& mode, std::span<const uint8_t> key);
  Status remove_key(const std::string& name);  // evicts it from its slot
  // The manager (null without ICE), e.g. for slot_owner() / programs_done().
  [[nodiscard]] KeyslotManager* keyslots();

  // --- lifecycle ---------------------------------------------------------------------
  // Wait until nothing is in flight on any queue.
  void drain();
  // Device reset (RESET_DEVICE): drains, resets, sets up features and rings again and
  // reprograms in-band keys. kBusy from a completion callback.
  Status reset();
  // Drop the connection and connect again to the same socket (e.g. after the
  // back-end restarted), then set everything up and reprogram in-band keys.
  Status reconnect();
  // Program every key that holds a slot again (reset()/reconnect() do it when the
  // device's key_generation changed).
  Status reprogram_keys();
  // Read key_generation from the config space again (what a driver does on a
  // config-change notification); when it changed since the keys were programmed, the
  // device lost them: program them again. True when it reprogrammed.
  Result<bool> refresh_keys();

 private:
  struct Impl;
  explicit Device(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Names of the set feature bits ("VERSION_1 FLUSH ICE ..."; unknown ones "bit<n>").
std::string feature_names(uint64_t features);

// Map a status byte to an error for `what` ("read 4096 bytes at offset 0"); OK -> {}.
Status status_to_error(uint8_t status, const std::string& what);

}  // namespace iceblk::driver
