#include "vhost_user/messages.h"

#include <cstring>

#include <fmt/format.h>

#include "base/le.h"

namespace iceblk::vhost_user {

std::string_view request_name(Request r) {
  switch (r) {
    case Request::kGetFeatures: return "GET_FEATURES";
    case Request::kSetFeatures: return "SET_FEATURES";
    case Request::kSetOwner: return "SET_OWNER";
    case Request::kResetOwner: return "RESET_OWNER";
    case Request::kSetMemTable: return "SET_MEM_TABLE";
    case Request::kSetLogBase: return "SET_LOG_BASE";
    case Request::kSetLogFd: return "SET_LOG_FD";
    case Request::kSetVringNum: return "SET_VRING_NUM";
    case Request::kSetVringAddr: return "SET_VRING_ADDR";
    case Request::kSetVringBase: return "SET_VRING_BASE";
    case Request::kGetVringBase: return "GET_VRING_BASE";
    case Request::kSetVringKick: return "SET_VRING_KICK";
    case Request::kSetVringCall: return "SET_VRING_CALL";
    case Request::kSetVringErr: return "SET_VRING_ERR";
    case Request::kGetProtocolFeatures: return "GET_PROTOCOL_FEATURES";
    case Request::kSetProtocolFeatures: return "SET_PROTOCOL_FEATURES";
    case Request::kGetQueueNum: return "GET_QUEUE_NUM";
    case Request::kSetVringEnable: return "SET_VRING_ENABLE";
    case Request::kSendRarp: return "SEND_RARP";
    case Request::kNetSetMtu: return "NET_SET_MTU";
    case Request::kSetBackendReqFd: return "SET_BACKEND_REQ_FD";
    case Request::kIotlbMsg: return "IOTLB_MSG";
    case Request::kSetVringEndian: return "SET_VRING_ENDIAN";
    case Request::kGetConfig: return "GET_CONFIG";
    case Request::kSetConfig: return "SET_CONFIG";
    case Request::kCreateCryptoSession: return "CREATE_CRYPTO_SESSION";
    case Request::kCloseCryptoSession: return "CLOSE_CRYPTO_SESSION";
    case Request::kPostcopyAdvise: return "POSTCOPY_ADVISE";
    case Request::kPostcopyListen: return "POSTCOPY_LISTEN";
    case Request::kPostcopyEnd: return "POSTCOPY_END";
    case Request::kGetInflightFd: return "GET_INFLIGHT_FD";
    case Request::kSetInflightFd: return "SET_INFLIGHT_FD";
    case Request::kGpuSetSocket: return "GPU_SET_SOCKET";
    case Request::kResetDevice: return "RESET_DEVICE";
    case Request::kVringKick: return "VRING_KICK";
    case Request::kGetMaxMemSlots: return "GET_MAX_MEM_SLOTS";
    case Request::kAddMemReg: return "ADD_MEM_REG";
    case Request::kRemMemReg: return "REM_MEM_REG";
    case Request::kSetStatus: return "SET_STATUS";
    case Request::kGetStatus: return "GET_STATUS";
    case Request::kGetSharedObject: return "GET_SHARED_OBJECT";
    case Request::kSetDeviceStateFd: return "SET_DEVICE_STATE_FD";
    case Request::kCheckDeviceState: return "CHECK_DEVICE_STATE";
  }
  return "UNKNOWN";
}

std::string request_name_of(uint32_t raw) {
  if (raw >= 1 && raw <= static_cast<uint32_t>(Request::kCheckDeviceState)) {
    return std::string(request_name(static_cast<Request>(raw)));
  }
  return fmt::format("UNKNOWN({})", raw);
}

std::vector<uint8_t> encode(uint32_t request, uint32_t flags, std::span<const uint8_t> payload) {
  Header h{request, flags, static_cast<uint32_t>(payload.size())};
  std::vector<uint8_t> out(sizeof h + payload.size());
  std::memcpy(out.data(), &h, sizeof h);
  if (!payload.empty()) std::memcpy(out.data() + sizeof h, payload.data(), payload.size());
  return out;
}

namespace {

// Check the payload size is exactly `want`.
Status expect_size(std::string_view name, const RawMessage& m, size_t want) {
  if (m.payload.size() != want) {
    return fail(Errc::kProtocol, "{}: payload size {} (expected {})", name, m.payload.size(), want);
  }
  return {};
}

// Check the number of received fds is exactly `want` (extra or missing = violation).
Status expect_fds(std::string_view name, const RawMessage& m, size_t want) {
  if (m.fds.size() != want) {
    return fail(Errc::kProtocol, "{}: {} file descriptor(s) attached (expected {})", name, m.fds.size(), want);
  }
  return {};
}

template <typename T>
T payload_as(const RawMessage& m) {
  return load_obj<T>(m.payload.data());  // size checked by the caller
}

Result<Body> decode_vring_fd(std::string_view name, RawMessage& m) {
  ICEBLK_TRY(expect_size(name, m, sizeof(uint64_t)));
  const auto v = payload_as<uint64_t>(m);
  if ((v & ~(kVringIndexMask | kVringNoFdMask)) != 0) {
    return fail(Errc::kProtocol, "{}: reserved bits set in 0x{:x}", name, v);
  }
  VringFdMsg b;
  b.index = static_cast<uint8_t>(v & kVringIndexMask);
  b.no_fd = (v & kVringNoFdMask) != 0;
  ICEBLK_TRY(expect_fds(name, m, b.no_fd ? 0 : 1));
  if (!b.no_fd) b.fd = std::move(m.fds[0]);
  return Body{std::move(b)};
}

Result<Body> decode_mem_table(std::string_view name, RawMessage& m) {
  if (m.payload.size() < sizeof(MemoryTableHeader)) {
    return fail(Errc::kProtocol, "{}: payload size {} too small", name, m.payload.size());
  }
  const auto hdr = payload_as<MemoryTableHeader>(m);
  if (hdr.nregions == 0 || hdr.nregions > kMaxMemTableRegions) {
    return fail(Errc::kProtocol, "{}: {} regions (allowed 1..{})", name, hdr.nregions, kMaxMemTableRegions);
  }
  // QEMU sends header + nregions entries; a full 8-entry struct is also accepted.
  const size_t exact = sizeof(MemoryTableHeader) + size_t{hdr.nregions} * sizeof(MemRegionDesc);
  if (m.payload.size() != exact && m.payload.size() != kMemTablePayloadSize) {
    return fail(Errc::kProtocol, "{}: payload size {} does not match {} regions", name, m.payload.size(),
                hdr.nregions);
  }
  ICEBLK_TRY(expect_fds(name, m, hdr.nregions));
  MemTableMsg b;
  for (uint32_t i = 0; i < hdr.nregions; ++i) {
    auto r = load_obj<MemRegionDesc>(m.payload.data() + sizeof(MemoryTableHeader) + i * sizeof(MemRegionDesc));
    if (r.memory_size == 0) return fail(Errc::kProtocol, "{}: region {} has size 0", name, i);
    b.regions.push_back(r);
  }
  b.fds = std::move(m.fds);
  return Body{std::move(b)};
}

Result<Body> decode_mem_reg(std::string_view name, RawMessage& m, bool add) {
  ICEBLK_TRY(expect_size(name, m, sizeof(SingleMemRegion)));
  MemRegMsg b;
  b.region = payload_as<SingleMemRegion>(m).region;
  if (add) {
    ICEBLK_TRY(expect_fds(name, m, 1));
    if (b.region.memory_size == 0) return fail(Errc::kProtocol, "{}: region has size 0", name);
    b.fd = std::move(m.fds[0]);
  } else if (m.fds.size() > 1) {
    // REM_MEM_REG: SHOULD carry no fd; one is tolerated (and closed), more is a violation.
    return fail(Errc::kProtocol, "{}: {} file descriptors attached (expected at most 1)", name, m.fds.size());
  }
  // REM_MEM_REG's optional fd is dropped (closed) with `m`.
  return Body{std::move(b)};
}

Result<Body> decode_config(std::string_view name, RawMessage& m) {
  if (m.payload.size() < sizeof(ConfigHeader)) {
    return fail(Errc::kProtocol, "{}: payload size {} too small", name, m.payload.size());
  }
  const auto hdr = payload_as<ConfigHeader>(m);
  if (hdr.size > kMaxConfigSize) {
    return fail(Errc::kProtocol, "{}: config size {} exceeds {}", name, hdr.size, kMaxConfigSize);
  }
  ICEBLK_TRY(expect_size(name, m, sizeof(ConfigHeader) + hdr.size));
  ICEBLK_TRY(expect_fds(name, m, 0));
  ConfigMsg b;
  b.offset = hdr.offset;
  b.size = hdr.size;
  b.flags = hdr.flags;
  b.data.assign(m.payload.begin() + sizeof(ConfigHeader), m.payload.end());
  return Body{std::move(b)};
}

Result<Body> decode_inflight(std::string_view name, RawMessage& m, bool set) {
  ICEBLK_TRY(expect_size(name, m, sizeof(InflightDesc)));
  ICEBLK_TRY(expect_fds(name, m, set ? 1 : 0));
  InflightMsg b;
  b.desc = payload_as<InflightDesc>(m);
  if (set) b.fd = std::move(m.fds[0]);
  return Body{std::move(b)};
}

Result<Body> decode_body(Request req, RawMessage& m) {
  const std::string_view name = request_name(req);
  switch (req) {
    case Request::kGetFeatures:
    case Request::kSetOwner:
    case Request::kResetOwner:
    case Request::kGetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kResetDevice:
    case Request::kGetMaxMemSlots:
    case Request::kGetStatus:
      ICEBLK_TRY(expect_size(name, m, 0));
      ICEBLK_TRY(expect_fds(name, m, 0));
      return Body{NoPayload{}};

    case Request::kSetFeatures:
    case Request::kSetProtocolFeatures:
    case Request::kSetStatus:
      ICEBLK_TRY(expect_size(name, m, sizeof(uint64_t)));
      ICEBLK_TRY(expect_fds(name, m, 0));
      return Body{U64Payload{payload_as<uint64_t>(m)}};

    case Request::kSetVringNum:
    case Request::kSetVringBase:
    case Request::kGetVringBase:
    case Request::kSetVringEnable:
      ICEBLK_TRY(expect_size(name, m, sizeof(VringState)));
      ICEBLK_TRY(expect_fds(name, m, 0));
      return Body{VringStateMsg{payload_as<VringState>(m)}};

    case Request::kSetVringAddr:
      ICEBLK_TRY(expect_size(name, m, sizeof(VringAddr)));
      ICEBLK_TRY(expect_fds(name, m, 0));
      return Body{VringAddrMsg{payload_as<VringAddr>(m)}};

    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      return decode_vring_fd(name, m);

    case Request::kSetMemTable:
      return decode_mem_table(name, m);
    case Request::kAddMemReg:
      return decode_mem_reg(name, m, true);
    case Request::kRemMemReg:
      return decode_mem_reg(name, m, false);

    case Request::kGetConfig:
    case Request::kSetConfig:
      return decode_config(name, m);

    case Request::kGetInflightFd:
      return decode_inflight(name, m, false);
    case Request::kSetInflightFd:
      return decode_inflight(name, m, true);

    // Known requests whose protocol/virtio feature we never offer: a front-end
    // sending them violated negotiation.
    case Request::kSetLogBase:
    case Request::kSetLogFd:
    case Request::kSendRarp:
    case Request::kNetSetMtu:
    case Request::kSetBackendReqFd:
    case Request::kIotlbMsg:
    case Request::kSetVringEndian:
    case Request::kCreateCryptoSession:
    case Request::kCloseCryptoSession:
    case Request::kPostcopyAdvise:
    case Request::kPostcopyListen:
    case Request::kPostcopyEnd:
    case Request::kGpuSetSocket:
    case Request::kVringKick:
    case Request::kGetSharedObject:
    case Request::kSetDeviceStateFd:
    case Request::kCheckDeviceState:
      return fail(Errc::kUnsupported, "{}: not supported by this back-end (feature not negotiated)", name);
  }
  return fail(Errc::kProtocol, "unknown request {}", static_cast<uint32_t>(req));
}

}  // namespace

Result<Message> decode(RawMessage raw) {
  const Header h = raw.header;
  if ((h.flags & kFlagVersionMask) != kVersion) {
    return fail(Errc::kProtocol, "{}: bad version in flags 0x{:x}", request_name_of(h.request), h.flags);
  }
  if ((h.flags & kFlagReply) != 0) {
    return fail(Errc::kProtocol, "{}: REPLY flag set on a request", request_name_of(h.request));
  }
  if (h.size != raw.payload.size()) {
    return fail(Errc::kProtocol, "{}: header size {} but {} payload bytes", request_name_of(h.request), h.size,
                raw.payload.size());
  }
  if (h.request < 1 || h.request > static_cast<uint32_t>(Request::kCheckDeviceState)) {
    return fail(Errc::kProtocol, "unknown request id {}", h.request);
  }
  const auto req = static_cast<Request>(h.request);
  ICEBLK_ASSIGN_OR_RETURN(Body body, decode_body(req, raw));
  return Message{req, h.flags, std::move(body)};
}

bool has_own_reply(Request r) {
  switch (r) {
    case Request::kGetFeatures:
    case Request::kGetProtocolFeatures:
    case Request::kGetVringBase:
    case Request::kGetQueueNum:
    case Request::kGetConfig:
    case Request::kGetMaxMemSlots:
    case Request::kGetStatus:
    case Request::kGetInflightFd:
      return true;
    default:
      return false;
  }
}

}  // namespace iceblk::vhost_user
