// vhost-user wire format (QEMU docs/interop/vhost-user.rst) and the message decoder.
//
// All numbers are in the machine's native byte order (the spec says so), so the
// wire structs use plain integers. Every struct is laid out without padding by
// construction (natural alignment); the static_asserts prove the packed size and
// offsets, so no [[gnu::packed]] is needed (and fields stay bindable to references).
//
// TRUST: decode() is the only parser of front-end bytes. It checks, per request
// type: the exact payload size (or the allowed range for variable-size messages),
// the version bits of the flags, the number of file descriptors (exactly what the
// message needs; extra fds are closed and the message rejected), queue-index bit
// ranges, region counts and config sizes. It never asserts on peer input: every
// violation is an Error (Errc::kProtocol, or kUnsupported for valid-but-unhandled
// requests). Semantic checks that need state (queue index < num_queues, memory
// overlap, ...) are the session's job.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "virtio/features.h"

namespace iceblk::vhost_user {

// ---- Header ----------------------------------------------------------------

struct Header {
  uint32_t request = 0;
  uint32_t flags = 0;
  uint32_t size = 0;  // payload bytes following the header
};
static_assert(sizeof(Header) == 12);
static_assert(offsetof(Header, flags) == 4 && offsetof(Header, size) == 8);

inline constexpr uint32_t kVersion = 0x1;          // flags bits 0-1
inline constexpr uint32_t kFlagVersionMask = 0x3;
inline constexpr uint32_t kFlagReply = 1u << 2;     // set on every back-end reply
inline constexpr uint32_t kFlagNeedReply = 1u << 3; // REPLY_ACK requested

// Largest payload we accept (larger = protocol violation, connection closed). The
// biggest message we handle is SET_MEM_TABLE (264 bytes) / GET_CONFIG (12 + 256).
inline constexpr uint32_t kMaxPayloadSize = 4096;
// Most fds a single message may carry (SET_MEM_TABLE: one per region, max 8).
inline constexpr size_t kMaxFdsPerMessage = 8;

// ---- Request ids (front-end -> back-end) -----------------------------------

enum class Request : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
  kGetSharedObject = 41,
  kSetDeviceStateFd = 42,
  kCheckDeviceState = 43,
};

// "GET_FEATURES" etc.; "UNKNOWN(<n>)" style is produced by request_name_of().
std::string_view request_name(Request r);

// Requests whose reply is their own payload (GET_*): with REPLY_ACK negotiated they
// get that reply, never an extra ack (vhost-user.rst, "REPLY_ACK").
bool has_own_reply(Request r);
std::string request_name_of(uint32_t raw);

// ---- Feature bits ------------------------------------------------------------

// In GET_FEATURES: the back-end supports GET/SET_PROTOCOL_FEATURES
// (VHOST_USER_F_PROTOCOL_FEATURES, bit 30, defined in virtio/features.h).
inline constexpr uint64_t kProtocolFeaturesBit = virtio::feature_bit(virtio::kFeatureVhostUserProtocol);
inline constexpr unsigned kFLogAll = 26;  // VHOST_F_LOG_ALL (not supported)

enum ProtocolFeature : unsigned {
  kPfMq = 0,
  kPfLogShmfd = 1,
  kPfRarp = 2,
  kPfReplyAck = 3,
  kPfMtu = 4,
  kPfBackendReq = 5,
  kPfCrossEndian = 6,
  kPfCryptoSession = 7,
  kPfPagefault = 8,
  kPfConfig = 9,
  kPfBackendSendFd = 10,
  kPfHostNotifier = 11,
  kPfInflightShmfd = 12,
  kPfResetDevice = 13,
  kPfInbandNotifications = 14,
  kPfConfigureMemSlots = 15,
  kPfStatus = 16,
  kPfXenMmap = 17,
  kPfSharedObject = 18,
  kPfDeviceState = 19,
};
constexpr uint64_t pf_bit(ProtocolFeature f) { return 1ull << static_cast<unsigned>(f); }

// The protocol features both halves implement: the back-end session always offers
// them and the front-end asks for them by default (when offered).
inline constexpr uint64_t kProtocolFeatures = pf_bit(kPfMq) | pf_bit(kPfReplyAck) |
                                              pf_bit(kPfConfig) | pf_bit(kPfConfigureMemSlots) |
                                              pf_bit(kPfResetDevice) | pf_bit(kPfInflightShmfd);

// ---- Payload structs ---------------------------------------------------------

struct VringState {
  uint32_t index = 0;
  uint32_t num = 0;
};
static_assert(sizeof(VringState) == 8);

inline constexpr uint32_t kVringFLog = 1u << 0;  // VHOST_VRING_F_LOG

struct VringAddr {
  uint32_t index = 0;
  uint32_t flags = 0;
  uint64_t desc_user_addr = 0;
  uint64_t used_user_addr = 0;
  uint64_t avail_user_addr = 0;
  uint64_t log_guest_addr = 0;
};
static_assert(sizeof(VringAddr) == 40);
static_assert(offsetof(VringAddr, desc_user_addr) == 8 && offsetof(VringAddr, used_user_addr) == 16 &&
              offsetof(VringAddr, avail_user_addr) == 24 && offsetof(VringAddr, log_guest_addr) == 32);

struct MemRegionDesc {
  uint64_t guest_phys_addr = 0;
  uint64_t memory_size = 0;
  uint64_t userspace_addr = 0;
  uint64_t mmap_offset = 0;
};
static_assert(sizeof(MemRegionDesc) == 32);

inline constexpr uint32_t kMaxMemTableRegions = 8;  // VHOST_MEMORY_BASELINE_NREGIONS

struct MemoryTableHeader {
  uint32_t nregions = 0;
  uint32_t padding = 0;
};
static_assert(sizeof(MemoryTableHeader) == 8);
// Full SET_MEM_TABLE payload (QEMU always sends all 8 slots).
inline constexpr uint32_t kMemTablePayloadSize =
    sizeof(MemoryTableHeader) + kMaxMemTableRegions * sizeof(MemRegionDesc);
static_assert(kMemTablePayloadSize == 264);

struct SingleMemRegion {
  uint64_t padding = 0;
  MemRegionDesc region;
};
static_assert(sizeof(SingleMemRegion) == 40);

struct ConfigHeader {
  uint32_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;  // 0 = writable fields, 1 = live migration
};
static_assert(sizeof(ConfigHeader) == 12);
inline constexpr uint32_t kMaxConfigSize = 256;  // VHOST_USER_MAX_CONFIG_SIZE (QEMU)
inline constexpr uint32_t kConfigFlagMigration = 1;

// GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (QEMU's VhostUserInflight: the struct is
// not packed, so it carries 4 bytes of tail padding and is 24 bytes on the wire).
struct InflightDesc {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
  uint16_t num_queues = 0;
  uint16_t queue_size = 0;
  uint32_t padding = 0;
};
static_assert(sizeof(InflightDesc) == 24);
static_assert(offsetof(InflightDesc, num_queues) == 16 && offsetof(InflightDesc, queue_size) == 18);

// SET_VRING_KICK/CALL/ERR u64 payload: bits 0-7 index, bit 8 "no fd".
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdMask = 1ull << 8;

// ---- Decoded messages --------------------------------------------------------

// One message as read off the socket: header, payload bytes, received fds.
struct RawMessage {
  Header header;
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
};

// Typed bodies, one per payload shape.
struct NoPayload {};                      // GET_FEATURES, SET_OWNER, RESET_OWNER, ...
struct U64Payload { uint64_t value = 0; };  // SET_FEATURES, SET_PROTOCOL_FEATURES, SET_STATUS
struct VringStateMsg { VringState state; };  // SET_VRING_NUM/BASE, GET_VRING_BASE, SET_VRING_ENABLE
struct VringAddrMsg { VringAddr addr; };
struct VringFdMsg {                        // SET_VRING_KICK/CALL/ERR
  uint8_t index = 0;
  bool no_fd = false;  // bit 8: no fd (polling / no notification)
  UniqueFd fd;         // valid iff !no_fd
};
struct MemTableMsg {                       // SET_MEM_TABLE
  std::vector<MemRegionDesc> regions;
  std::vector<UniqueFd> fds;  // same order and count as regions
};
struct MemRegMsg {                         // ADD_MEM_REG (fd valid) / REM_MEM_REG (fd closed)
  MemRegionDesc region;
  UniqueFd fd;
};
struct ConfigMsg {                         // GET_CONFIG / SET_CONFIG
  uint32_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;
  std::vector<uint8_t> data;  // SET_CONFIG: `size` bytes; GET_CONFIG: ignored contents
};

struct InflightMsg {  // GET_INFLIGHT_FD (no fd) / SET_INFLIGHT_FD (fd valid)
  InflightDesc desc;
  UniqueFd fd;
};

using Body = std::variant<NoPayload, U64Payload, VringStateMsg, VringAddrMsg, VringFdMsg,
                          MemTableMsg, MemRegMsg, ConfigMsg, InflightMsg>;

struct Message {
  Request request;
  uint32_t flags = 0;
  Body body;

  [[nodiscard]] bool need_reply() const { return (flags & kFlagNeedReply) != 0; }
};

// Validate a raw front-end message and convert it to its typed form (see TRUST
// above). Consumes the fds: on success they move into the body, on error they are
// closed. Unknown request ids are kProtocol; known ids this back-end does not
// implement (logging, postcopy, ...) are kUnsupported.
Result<Message> decode(RawMessage raw);

// Build a back-end reply / front-end request as bytes (header + payload).
std::vector<uint8_t> encode(uint32_t request, uint32_t flags, std::span<const uint8_t> payload);

template <typename T>
std::span<const uint8_t> as_bytes_of(const T& t) {
  return {reinterpret_cast<const uint8_t*>(&t), sizeof t};
}

}  // namespace iceblk::vhost_user
