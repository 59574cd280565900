#include "vhost_user/frontend.h"

#include <cstring>

namespace iceblk::vhost_user {


namespace {

tl::unexpected<Error> tagged(Request r, const Error& e) {
  return tl::unexpected(Error(e.code, fmt::format("vhost-user {}: {}", request_name(r), e.message)));
}

template <typename T>
std::vector<uint8_t> bytes_of(const T& t) {
  auto s = as_bytes_of(t);
  return {s.begin(), s.end()};
}

MemRegionDesc to_desc(const SharedRegion& r) {
  return MemRegionDesc{r.guest_addr, r.size, r.user_addr, r.mmap_offset};
}

}  // namespace

Result<std::unique_ptr<Frontend>> Frontend::connect(const std::string& socket_path) {
  return connect(socket_path, Options{});
}

Result<std::unique_ptr<Frontend>> Frontend::connect(const std::string& socket_path,
                                                                      Options opts) {
  ICEBLK_ASSIGN_OR_RETURN(auto c, Connection::connect(socket_path));
  return std::unique_ptr<Frontend>(new Frontend(std::move(c), opts));
}

bool Frontend::reply_ack() const {
  return (acked_protocol_features_ & pf_bit(kPfReplyAck)) != 0;
}

Result<std::vector<uint8_t>> Frontend::read_reply(Request req, std::optional<size_t> expected_size) {
  ICEBLK_ASSIGN_OR_RETURN(auto m, read_reply_raw(req, expected_size, 0));
  return std::move(m.payload);
}

Result<RawMessage> Frontend::read_reply_raw(Request req, std::optional<size_t> expected_size,
                                            size_t max_fds) {
  auto m = conn_.receive(-1, opts_.reply_timeout_ms);
  if (!m) return tl::unexpected(m.error());
  // TRUST: the back-end is a peer too; check what we act on.
  if (m->header.request != static_cast<uint32_t>(req)) {
    return fail(Errc::kProtocol, "reply is for request {}", request_name_of(m->header.request));
  }
  if ((m->header.flags & kFlagVersionMask) != kVersion ||
      (m->header.flags & kFlagReply) == 0) {
    return fail(Errc::kProtocol, "reply has bad flags 0x{:x}", m->header.flags);
  }
  if (m->fds.size() > max_fds) return fail(Errc::kProtocol, "unexpected file descriptors in reply");
  if (expected_size && m->payload.size() != *expected_size) {
    return fail(Errc::kProtocol, "reply payload size {} (expected {})", m->payload.size(), *expected_size);
  }
  return std::move(*m);
}

Result<std::vector<uint8_t>> Frontend::call(Request req, std::span<const uint8_t> payload,
                                                     std::optional<size_t> expected_size) {
  std::lock_guard lk(mu_);
  if (auto s = conn_.send(static_cast<uint32_t>(req), kVersion, payload); !s) {
    return tagged(req, s.error());
  }
  auto r = read_reply(req, expected_size);
  if (!r) return tagged(req, r.error());
  return r;
}

Status Frontend::request(Request req, std::span<const uint8_t> payload, std::span<const int> fds) {
  std::lock_guard lk(mu_);
  const bool ack = reply_ack() && !has_own_reply(req);
  const uint32_t flags = kVersion | (ack ? kFlagNeedReply : 0);
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

Result<uint64_t> Frontend::call_u64(Request req) {
  ICEBLK_ASSIGN_OR_RETURN(auto p, call(req, {}, sizeof(uint64_t)));
  return load_obj<uint64_t>(p.data());
}

Result<uint64_t> Frontend::get_features() { return call_u64(Request::kGetFeatures); }

Status Frontend::set_features(uint64_t features) {
  ICEBLK_TRY(request(Request::kSetFeatures, as_bytes_of(features)));
  acked_features_ = features;
  return {};
}

Result<uint64_t> Frontend::get_protocol_features() {
  return call_u64(Request::kGetProtocolFeatures);
}

Status Frontend::set_protocol_features(uint64_t features) {
  // Sent before REPLY_ACK is in force (the ack flag follows the negotiated state).
  ICEBLK_TRY(request(Request::kSetProtocolFeatures, as_bytes_of(features)));
  acked_protocol_features_ = features;
  return {};
}

Status Frontend::set_owner() { return request(Request::kSetOwner, {}); }
Status Frontend::reset_owner() { return request(Request::kResetOwner, {}); }
Result<uint64_t> Frontend::get_queue_num() { return call_u64(Request::kGetQueueNum); }
Result<uint64_t> Frontend::get_max_mem_slots() { return call_u64(Request::kGetMaxMemSlots); }

Status Frontend::set_mem_table(std::span<const SharedRegion> regions) {
  if (regions.empty() || regions.size() > kMaxMemTableRegions) {
    return tagged(Request::kSetMemTable,
                  Error(Errc::kInvalidArgument, fmt::format("{} regions (allowed 1..8)", regions.size())));
  }
  MemoryTableHeader h{static_cast<uint32_t>(regions.size()), 0};
  std::vector<uint8_t> payload = bytes_of(h);
  std::vector<int> fds;
  for (const auto& r : regions) {
    auto d = bytes_of(to_desc(r));
    payload.insert(payload.end(), d.begin(), d.end());
    fds.push_back(r.fd);
  }
  return request(Request::kSetMemTable, payload, fds);
}

Status Frontend::add_mem_reg(const SharedRegion& region) {
  SingleMemRegion m{0, to_desc(region)};
  const int fd = region.fd;
  return request(Request::kAddMemReg, as_bytes_of(m), std::span<const int>(&fd, 1));
}

Status Frontend::rem_mem_reg(const SharedRegion& region) {
  SingleMemRegion m{0, to_desc(region)};
  return request(Request::kRemMemReg, as_bytes_of(m));
}

Status Frontend::set_vring_num(uint16_t q, uint16_t num) {
  VringState s{q, num};
  return request(Request::kSetVringNum, as_bytes_of(s));
}

Status Frontend::set_vring_addr(uint16_t q, uint64_t desc_user_addr, uint64_t avail_user_addr,
                                         uint64_t used_user_addr) {
  VringAddr a;
  a.index = q;
  a.desc_user_addr = desc_user_addr;
  a.avail_user_addr = avail_user_addr;
  a.used_user_addr = used_user_addr;
  return request(Request::kSetVringAddr, as_bytes_of(a));
}

Status Frontend::set_vring_base(uint16_t q, uint16_t base) {
  VringState s{q, base};
  return request(Request::kSetVringBase, as_bytes_of(s));
}

Result<uint16_t> Frontend::get_vring_base(uint16_t q) {
  VringState s{q, 0};
  ICEBLK_ASSIGN_OR_RETURN(auto p, call(Request::kGetVringBase, as_bytes_of(s), sizeof s));
  const auto r = load_obj<VringState>(p.data());
  if (r.index != q || r.num > 0xffff) {
    return tagged(Request::kGetVringBase,
                  Error(Errc::kProtocol, fmt::format("reply index {} num 0x{:x} for vring {}", r.index, r.num, q)));
  }
  return static_cast<uint16_t>(r.num);
}

Status Frontend::vring_fd(Request req, uint16_t q, int fd) {
  if (q > kVringIndexMask) {
    return tagged(req, Error(Errc::kInvalidArgument, fmt::format("vring index {} does not fit 8 bits", q)));
  }
  uint64_t v = q;
  if (fd < 0) v |= kVringNoFdMask;
  if (fd < 0) return request(req, as_bytes_of(v));
  return request(req, as_bytes_of(v), std::span<const int>(&fd, 1));
}

Status Frontend::set_vring_kick(uint16_t q, int fd) { return vring_fd(Request::kSetVringKick, q, fd); }
Status Frontend::set_vring_call(uint16_t q, int fd) { return vring_fd(Request::kSetVringCall, q, fd); }
Status Frontend::set_vring_err(uint16_t q, int fd) { return vring_fd(Request::kSetVringErr, q, fd); }

Status Frontend::set_vring_enable(uint16_t q, bool enable) {
  VringState s{q, enable ? 1u : 0u};
  return request(Request::kSetVringEnable, as_bytes_of(s));
}

Result<std::vector<uint8_t>> Frontend::get_config(uint32_t offset, uint32_t size, uint32_t flags) {
  if (size > kMaxConfigSize) {
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

Status Frontend::set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t flags) {
  if (data.size() > kMaxConfigSize) {
    return tagged(Request::kSetConfig, Error(Errc::kInvalidArgument, fmt::format("size {} > 256", data.size())));
  }
  ConfigHeader h{offset, static_cast<uint32_t>(data.size()), flags};
  std::vector<uint8_t> payload = bytes_of(h);
  payload.insert(payload.end(), data.begin(), data.end());
  return request(Request::kSetConfig, payload);
}

Result<InflightShm> Frontend::get_inflight_fd(uint16_t num_queues, uint16_t queue_size) {
  const Request req = Request::kGetInflightFd;
  if ((acked_protocol_features_ & pf_bit(kPfInflightShmfd)) == 0) {
    return tagged(req, Error(Errc::kUnsupported, "INFLIGHT_SHMFD not negotiated"));
  }
  InflightDesc d{0, 0, num_queues, queue_size, 0};
  std::lock_guard lk(mu_);
  if (auto s = conn_.send(static_cast<uint32_t>(req), kVersion, as_bytes_of(d)); !s)
    return tagged(req, s.error());
  auto m = read_reply_raw(req, sizeof(InflightDesc), 1);
  if (!m) return tagged(req, m.error());
  const auto r = load_obj<InflightDesc>(m->payload.data());
  InflightShm out;
  out.mmap_size = r.mmap_size;
  out.mmap_offset = r.mmap_offset;
  out.num_queues = r.num_queues;
  out.queue_size = r.queue_size;
  // TRUST: a region comes with exactly one fd; mmap_size 0 means "declined", no fd.
  if ((r.mmap_size != 0) != (m->fds.size() == 1)) {
    return tagged(req, Error(Errc::kProtocol, fmt::format("mmap_size {} with {} fd(s)", r.mmap_size,
                                                          m->fds.size())));
  }
  if (r.mmap_size != 0) out.fd = std::move(m->fds[0]);
  return out;
}

Status Frontend::set_inflight_fd(const InflightShm& shm) {
  if (!shm.fd.valid()) {
    return tagged(Request::kSetInflightFd, Error(Errc::kInvalidArgument, "no inflight region"));
  }
  InflightDesc d{shm.mmap_size, shm.mmap_offset, shm.num_queues, shm.queue_size, 0};
  const int fd = shm.fd.get();
  return request(Request::kSetInflightFd, as_bytes_of(d), std::span<const int>(&fd, 1));
}

Status Frontend::reset_device() { return request(Request::kResetDevice, {}); }

Status Frontend::set_status(uint8_t status) {
  const uint64_t v = status;
  return request(Request::kSetStatus, as_bytes_of(v));
}

Result<uint8_t> Frontend::get_status() {
  ICEBLK_ASSIGN_OR_RETURN(uint64_t v, call_u64(Request::kGetStatus));
  if (v > 0xff) return tagged(Request::kGetStatus, Error(Errc::kProtocol, "status does not fit a byte"));
  return static_cast<uint8_t>(v);
}

Result<Frontend::Negotiated> Frontend::handshake(uint64_t wanted_features,
                                                                   uint64_t wanted_protocol_features) {
  Negotiated n;
  ICEBLK_ASSIGN_OR_RETURN(uint64_t offered, get_features());
  ICEBLK_TRY(set_owner());
  const bool has_pf = (offered & kProtocolFeaturesBit) != 0;
  if (has_pf) {
    ICEBLK_ASSIGN_OR_RETURN(uint64_t offered_pf, get_protocol_features());
    n.protocol_features = offered_pf & wanted_protocol_features;
    ICEBLK_TRY(set_protocol_features(n.protocol_features));
    if ((n.protocol_features & pf_bit(kPfMq)) != 0) {
      ICEBLK_ASSIGN_OR_RETURN(uint64_t qn, get_queue_num());
      if (qn == 0 || qn > 0xffff) {
        return tagged(Request::kGetQueueNum, Error(Errc::kProtocol, fmt::format("{} queues", qn)));
      }
      n.num_queues = static_cast<uint16_t>(qn);
    }
  }
  n.features = (offered & wanted_features) | (has_pf ? kProtocolFeaturesBit : 0);
  ICEBLK_TRY(set_features(n.features));
  return n;
}

Status Frontend::setup_vring(uint16_t q, const VringSetup& s) {
  ICEBLK_TRY(set_vring_num(q, s.size));
  ICEBLK_TRY(set_vring_base(q, s.base));
  ICEBLK_TRY(set_vring_addr(q, s.desc_user_addr, s.avail_user_addr, s.used_user_addr));
  ICEBLK_TRY(set_vring_call(q, s.call_fd));
  ICEBLK_TRY(set_vring_kick(q, s.kick_fd));
  if ((acked_features_ & kProtocolFeaturesBit) != 0) ICEBLK_TRY(set_vring_enable(q, true));
  return {};
}

}  // namespace iceblk::vhost_user
