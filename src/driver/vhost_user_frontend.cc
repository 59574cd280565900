#include "driver/vhost_user_frontend.h"

#include <cstring>

namespace iceblk::driver {

using vhost_user::ConfigHeader;
using vhost_user::MemRegionDesc;
using vhost_user::Request;
using vhost_user::request_name;

namespace {

tl::unexpected<Error> tagged(Request r, const Error& e) {
  return tl::unexpected(Error(e.code, fmt::format("vhost-user {}: {}", request_name(r), e.message)));
}

template <typename T>
std::vector<uint8_t> bytes_of(const T& t) {
  auto s = vhost_user::as_bytes_of(t);
  return {s.begin(), s.end()};
}

MemRegionDesc to_desc(const SharedRegion& r) {
  return MemRegionDesc{r.guest_addr, r.size, r.user_addr, r.mmap_offset};
}

}  // namespace

Result<std::unique_ptr<VhostUserFrontend>> VhostUserFrontend::connect(const std::string& socket_path) {
  return connect(socket_path, Options{});
}

Result<std::unique_ptr<VhostUserFrontend>> VhostUserFrontend::connect(const std::string& socket_path,
                                                                      Options opts) {
  ICEBLK_ASSIGN_OR_RETURN(auto c, vhost_user::Connection::connect(socket_path));
  return std::unique_ptr<VhostUserFrontend>(new VhostUserFrontend(std::move(c), opts));
}

bool VhostUserFrontend::reply_ack() const {
  return (acked_protocol_features_ & vhost_user::pf_bit(vhost_user::kPfReplyAck)) != 0;
}

Result<std::vector<uint8_t>> VhostUserFrontend::read_reply(Request req, std::optional<size_t> expected_size) {
  auto m = conn_.receive(-1, opts_.reply_timeout_ms);
  if (!m) return tl::unexpected(m.error());
  // TRUST: the back-end is a peer too; check what we act on.
  if (m->header.request != static_cast<uint32_t>(req)) {
    return fail(Errc::kProtocol, "reply is for request {}", vhost_user::request_name_of(m->header.request));
  }
  if ((m->header.flags & vhost_user::kFlagVersionMask) != vhost_user::kVersion ||
      (m->header.flags & vhost_user::kFlagReply) == 0) {
    return fail(Errc::kProtocol, "reply has bad flags 0x{:x}", m->header.flags);
  }
  if (!m->fds.empty()) return fail(Errc::kProtocol, "unexpected file descriptors in reply");
  if (expected_size && m->payload.size() != *expected_size) {
    return fail(Errc::kProtocol, "reply payload size {} (expected {})", m->payload.size(), *expected_size);
  }
  return std::move(m->payload);
}

Result<std::vector<uint8_t>> VhostUserFrontend::call(Request req, std::span<const uint8_t> payload,
                                                     std::optional<size_t> expected_size) {
  std::lock_guard lk(mu_);
  if (auto s = conn_.send(static_cast<uint32_t>(req), vhost_user::kVersion, payload); !s) {
    return tagged(req, s.error());
  }
  auto r = read_reply(req, expected_size);
  if (!r) return tagged(req, r.error());
  return r;
}

Status VhostUserFrontend::request(Request req, std::span<const uint8_t> payload, std::span<const int> fds) {
  std::lock_guard lk(mu_);
  const bool ack = reply_ack() && !has_own_reply(req);
  const uint32_t flags = vhost_user::kVersion | (ack ? vhost_user::kFlagNeedReply : 0);
  Status s;
  if (payload.empty() && !fds.empty()) {
    s = fail(Errc::kInvalidArgument, "fds need a payload");
  } else {
    s = conn_.send(static_cast<uint32_t>(req), flags, payload, fds);
  }
  if (!s) return tagged(req, s.error());
  if (!ack) return {};
  auto r = read_reply(req, sizeof(uint64_t));
  if (!r) return tagged(req, r.error());
  const auto v = load_obj<uint64_t>(r->data());
  if (v != 0) return tagged(req, Error(Errc::kInvalidArgument, fmt::format("rejected by the back-end (ack {})", v)));
  return {};
}

Result<uint64_t> VhostUserFrontend::call_u64(Request req) {
  ICEBLK_ASSIGN_OR_RETURN(auto p, call(req, {}, sizeof(uint64_t)));
  return load_obj<uint64_t>(p.data());
}

Result<uint64_t> VhostUserFrontend::get_features() { return call_u64(Request::kGetFeatures); }

Status VhostUserFrontend::set_features(uint64_t features) {
  ICEBLK_TRY(request(Request::kSetFeatures, vhost_user::as_bytes_of(features)));
  acked_features_ = features;
  return {};
}

Result<uint64_t> VhostUserFrontend::get_protocol_features() {
  return call_u64(Request::kGetProtocolFeatures);
}

Status VhostUserFrontend::set_protocol_features(uint64_t features) {
  // Sent before REPLY_ACK is in force (the ack flag follows the negotiated state).
  ICEBLK_TRY(request(Request::kSetProtocolFeatures, vhost_user::as_bytes_of(features)));
  acked_protocol_features_ = features;
  return {};
}

Status VhostUserFrontend::set_owner() { return request(Request::kSetOwner, {}); }
Status VhostUserFrontend::reset_owner() { return request(Request::kResetOwner, {}); }
Result<uint64_t> VhostUserFrontend::get_queue_num() { return call_u64(Request::kGetQueueNum); }
Result<uint64_t> VhostUserFrontend::get_max_mem_slots() { return call_u64(Request::kGetMaxMemSlots); }

Status VhostUserFrontend::set_mem_table(std::span<const SharedRegion> regions) {
  if (regions.empty() || regions.size() > vhost_user::kMaxMemTableRegions) {
    return tagged(Request::kSetMemTable,
                  Error(Errc::kInvalidArgument, fmt::format("{} regions (allowed 1..8)", regions.size())));
  }
  vhost_user::MemoryTableHeader h{static_cast<uint32_t>(regions.size()), 0};
  std::vector<uint8_t> payload = bytes_of(h);
  std::vector<int> fds;
  for (const auto& r : regions) {
    auto d = bytes_of(to_desc(r));
    payload.insert(payload.end(), d.begin(), d.end());
    fds.push_back(r.fd);
  }
  return request(Request::kSetMemTable, payload, fds);
}

Status VhostUserFrontend::add_mem_reg(const SharedRegion& region) {
  vhost_user::SingleMemRegion m{0, to_desc(region)};
  const int fd = region.fd;
  return request(Request::kAddMemReg, vhost_user::as_bytes_of(m), std::span<const int>(&fd, 1));
}

Status VhostUserFrontend::rem_mem_reg(const SharedRegion& region) {
  vhost_user::SingleMemRegion m{0, to_desc(region)};
  return request(Request::kRemMemReg, vhost_user::as_bytes_of(m));
}

Status VhostUserFrontend::set_vring_num(uint16_t q, uint16_t num) {
  vhost_user::VringState s{q, num};
  return request(Request::kSetVringNum, vhost_user::as_bytes_of(s));
}

Status VhostUserFrontend::set_vring_addr(uint16_t q, uint64_t desc_user_addr, uint64_t avail_user_addr,
                                         uint64_t used_user_addr) {
  vhost_user::VringAddr a;
  a.index = q;
  a.desc_user_addr = desc_user_addr;
  a.avail_user_addr = avail_user_addr;
  a.used_user_addr = used_user_addr;
  return request(Request::kSetVringAddr, vhost_user::as_bytes_of(a));
}

Status VhostUserFrontend::set_vring_base(uint16_t q, uint16_t base) {
  vhost_user::VringState s{q, base};
  return request(Request::kSetVringBase, vhost_user::as_bytes_of(s));
}

Result<uint16_t> VhostUserFrontend::get_vring_base(uint16_t q) {
  vhost_user::VringState s{q, 0};
  ICEBLK_ASSIGN_OR_RETURN(auto p, call(Request::kGetVringBase, vhost_user::as_bytes_of(s), sizeof s));
  const auto r = load_obj<vhost_user::VringState>(p.data());
  if (r.index != q || r.num > 0xffff) {
    return tagged(Request::kGetVringBase,
                  Error(Errc::kProtocol, fmt::format("reply index {} num 0x{:x} for vring {}", r.index, r.num, q)));
  }
  return static_cast<uint16_t>(r.num);
}

Status VhostUserFrontend::vring_fd(Request req, uint16_t q, int fd) {
  if (q > vhost_user::kVringIndexMask) {
    return tagged(req, Error(Errc::kInvalidArgument, fmt::format("vring index {} does not fit 8 bits", q)));
  }
  uint64_t v = q;
  if (fd < 0) v |= vhost_user::kVringNoFdMask;
  if (fd < 0) return request(req, vhost_user::as_bytes_of(v));
  return request(req, vhost_user::as_bytes_of(v), std::span<const int>(&fd, 1));
}

Status VhostUserFrontend::set_vring_kick(uint16_t q, int fd) { return vring_fd(Request::kSetVringKick, q, fd); }
Status VhostUserFrontend::set_vring_call(uint16_t q, int fd) { return vring_fd(Request::kSetVringCall, q, fd); }
Status VhostUserFrontend::set_vring_err(uint16_t q, int fd) { return vring_fd(Request::kSetVringErr, q, fd); }

Status VhostUserFrontend::set_vring_enable(uint16_t q, bool enable) {
  vhost_user::VringState s{q, enable ? 1u : 0u};
  return request(Request::kSetVringEnable, vhost_user::as_bytes_of(s));
}

Result<std::vector<uint8_t>> VhostUserFrontend::get_config(uint32_t offset, uint32_t size, uint32_t flags) {
  if (size > vhost_user::kMaxConfigSize) {
    return tagged(Request::kGetConfig, Error(Errc::kInvalidArgument, fmt::format("size {} > 256", size)));
  }
  ConfigHeader h{offset, size, flags};
  std::vector<uint8_t> payload = bytes_of(h);
  payload.resize(sizeof h + size);
  ICEBLK_ASSIGN_OR_RETURN(auto p, call(Request::kGetConfig, payload, std::nullopt));
  if (p.empty()) {
    return tagged(Request::kGetConfig,
                  Error(Errc::kOutOfRange,
                        fmt::format("back-end refused offset {} size {} (empty reply)", offset, size)));
  }
  if (p.size() != sizeof h + size) {
    return tagged(Request::kGetConfig,
                  Error(Errc::kProtocol, fmt::format("reply size {} (expected {})", p.size(), sizeof h + size)));
  }
  const auto rh = load_obj<ConfigHeader>(p.data());
  if (rh.offset != offset || rh.size != size) {
    return tagged(Request::kGetConfig, Error(Errc::kProtocol, "reply header does not match the request"));
  }
  return std::vector<uint8_t>(p.begin() + sizeof h, p.end());
}

Status VhostUserFrontend::set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t flags) {
  if (data.size() > vhost_user::kMaxConfigSize) {
    return tagged(Request::kSetConfig, Error(Errc::kInvalidArgument, fmt::format("size {} > 256", data.size())));
  }
  ConfigHeader h{offset, static_cast<uint32_t>(data.size()), flags};
  std::vector<uint8_t> payload = bytes_of(h);
  payload.insert(payload.end(), data.begin(), data.end());
  return request(Request::kSetConfig, payload);
}

Status VhostUserFrontend::reset_device() { return request(Request::kResetDevice, {}); }

Status VhostUserFrontend::set_status(uint8_t status) {
  const uint64_t v = status;
  return request(Request::kSetStatus, vhost_user::as_bytes_of(v));
}

Result<uint8_t> VhostUserFrontend::get_status() {
  ICEBLK_ASSIGN_OR_RETURN(uint64_t v, call_u64(Request::kGetStatus));
  if (v > 0xff) return tagged(Request::kGetStatus, Error(Errc::kProtocol, "status does not fit a byte"));
  return static_cast<uint8_t>(v);
}

Result<VhostUserFrontend::Negotiated> VhostUserFrontend::handshake(uint64_t wanted_features,
                                                                   uint64_t wanted_protocol_features) {
  Negotiated n;
  ICEBLK_ASSIGN_OR_RETURN(uint64_t offered, get_features());
  ICEBLK_TRY(set_owner());
  const bool has_pf = (offered & vhost_user::kProtocolFeaturesBit) != 0;
  if (has_pf) {
    ICEBLK_ASSIGN_OR_RETURN(uint64_t offered_pf, get_protocol_features());
    n.protocol_features = offered_pf & wanted_protocol_features;
    ICEBLK_TRY(set_protocol_features(n.protocol_features));
    if ((n.protocol_features & vhost_user::pf_bit(vhost_user::kPfMq)) != 0) {
      ICEBLK_ASSIGN_OR_RETURN(uint64_t qn, get_queue_num());
      if (qn == 0 || qn > 0xffff) {
        return tagged(Request::kGetQueueNum, Error(Errc::kProtocol, fmt::format("{} queues", qn)));
      }
      n.num_queues = static_cast<uint16_t>(qn);
    }
  }
  n.features = (offered & wanted_features) | (has_pf ? vhost_user::kProtocolFeaturesBit : 0);
  ICEBLK_TRY(set_features(n.features));
  return n;
}

Status VhostUserFrontend::setup_vring(uint16_t q, const VringSetup& s) {
  ICEBLK_TRY(set_vring_num(q, s.size));
  ICEBLK_TRY(set_vring_base(q, s.base));
  ICEBLK_TRY(set_vring_addr(q, s.desc_user_addr, s.avail_user_addr, s.used_user_addr));
  ICEBLK_TRY(set_vring_call(q, s.call_fd));
  ICEBLK_TRY(set_vring_kick(q, s.kick_fd));
  if ((acked_features_ & vhost_user::kProtocolFeaturesBit) != 0) ICEBLK_TRY(set_vring_enable(q, true));
  return {};
}

}  // namespace iceblk::driver
