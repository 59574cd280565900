#include "vhost_user/session.h"

#include <sys/eventfd.h>

#include <cstring>

#include "base/checked.h"
#include "base/log.h"
#include "base/log_context.h"

namespace iceblk::vhost_user {

namespace {

using virtio::feature_bit;
using virtio::has_feature;

// Features the session can never honour whatever the device says.
constexpr uint64_t kUnsupportedVirtioFeatures = feature_bit(kFLogAll) | feature_bit(virtio::kFeatureRingPacked);

std::vector<uint8_t> u64_bytes(uint64_t v) {
  std::vector<uint8_t> out(sizeof v);
  std::memcpy(out.data(), &v, sizeof v);
  return out;
}

Reply u64_reply(Request r, uint64_t v) {
  return Reply{static_cast<uint32_t>(r), u64_bytes(v), {}};
}

}  // namespace

Session::Session(Backend& device)
    : device_(device),
      poisoned_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      vrings_(device.num_queues()) {}

Session::~Session() { stop_all(); }

uint64_t Session::offered_features() const {
  return (device_.features() & ~kUnsupportedVirtioFeatures) | kProtocolFeaturesBit;
}

uint64_t Session::offered_protocol_features() const {
  return kProtocolFeatures | (device_.protocol_features() & kSessionOptionalProtocolFeatures);
}

bool Session::ring_started(uint16_t q) const { return q < vrings_.size() && vrings_[q].worker != nullptr; }
bool Session::ring_enabled(uint16_t q) const { return q < vrings_.size() && effective_enabled(vrings_[q]); }

bool Session::poisoned() const {
  if (mem_ && mem_->poisoned()) return true;
  if (inflight_ && inflight_->mapping->poisoned()) return true;
  for (const auto& v : vrings_)
    if (v.worker && v.worker->poisoned()) return true;
  return false;
}

Error Session::poisoned_error() const {
  const std::string& name = log::thread_context().export_name;
  return make_error(
      Errc::kProtocol,
      "export {}: the front-end shrank its guest memory under the device (SIGBUS "
      "contained on its memory file); its requests failed and the connection is closed",
      name.empty() ? std::string("-") : name);
}

bool Session::effective_enabled(const Vring& v) const {
  // Spec: without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled from the start.
  return v.enabled || (acked_features_ & kProtocolFeaturesBit) == 0;
}

bool Session::any_started() const {
  for (const auto& v : vrings_)
    if (v.worker) return true;
  return false;
}

void Session::stop_ring(Vring& v) {
  if (!v.worker) return;
  v.base = v.worker->stop();
  v.worker.reset();
}

void Session::stop_all() {
  for (auto& v : vrings_) stop_ring(v);
}

void Session::reset_rings() {
  stop_all();
  for (auto& v : vrings_) v = Vring{};
}

void Session::close() {
  if (closed_) return;
  closed_ = true;
  stop_all();
  device_.reset();
}

Result<Session::Vring*> Session::vring(uint32_t index, Request req) {
  // TRUST: the queue index comes from the front-end.
  if (index >= vrings_.size()) {
    return fail(Errc::kProtocol, "{}: queue index {} out of range (device has {} queues)", request_name(req), index,
                vrings_.size());
  }
  return &vrings_[index];
}

Result<std::optional<Reply>> Session::handle(Message msg) {
  // A poisoned connection is over, whatever the front-end sends next (even a new
  // memory table: the one it cut is still referenced by what was in flight).
  if (poisoned()) return tl::unexpected(poisoned_error());
  const Request req = msg.request;
  const bool ack_wanted =
      msg.need_reply() && (acked_protocol_features_ & pf_bit(kPfReplyAck)) != 0 && !has_own_reply(req);
  auto r = dispatch(msg);
  if (!r) {
    if (r.error().code == Errc::kProtocol || has_own_reply(req)) {
      return fail(Errc::kProtocol, "{}", r.error().message);
    }
    ICEBLK_PEER_WARN("vhost-user {} refused: {}", request_name(req), r.error().to_string());
    if (ack_wanted) return std::optional<Reply>(u64_reply(req, 1));
    return std::optional<Reply>();
  }
  if (!*r && ack_wanted) return std::optional<Reply>(u64_reply(req, 0));
  return r;
}

Result<std::optional<Reply>> Session::dispatch(Message& msg) {
  using R = std::optional<Reply>;
  const Request req = msg.request;
  auto& body = msg.body;
  switch (req) {
    case Request::kGetFeatures:
      return R(u64_reply(req, offered_features()));
    case Request::kSetFeatures:
      ICEBLK_TRY(on_set_features(std::get<U64Payload>(body).value));
      return R();
    case Request::kGetProtocolFeatures:
      return R(u64_reply(req, offered_protocol_features()));
    case Request::kSetProtocolFeatures:
      ICEBLK_TRY(on_set_protocol_features(std::get<U64Payload>(body).value));
      return R();
    case Request::kSetOwner:
      owner_ = true;
      return R();
    case Request::kResetOwner:
      // Deprecated; treated as a full reset that also gives up ownership.
      reset_rings();
      inflight_.reset();
      acked_features_ = 0;
      owner_ = false;
      device_.reset();
      return R();
    case Request::kSetMemTable:
      ICEBLK_TRY(on_set_mem_table(std::get<MemTableMsg>(body)));
      return R();
    case Request::kGetMaxMemSlots:
      return R(u64_reply(req, kMaxMemSlots));
    case Request::kAddMemReg:
      ICEBLK_TRY(on_add_mem_reg(std::get<MemRegMsg>(body)));
      return R();
    case Request::kRemMemReg:
      ICEBLK_TRY(on_rem_mem_reg(std::get<MemRegMsg>(body)));
      return R();
    case Request::kSetVringNum:
      ICEBLK_TRY(on_set_vring_num(std::get<VringStateMsg>(body).state));
      return R();
    case Request::kSetVringAddr:
      ICEBLK_TRY(on_set_vring_addr(std::get<VringAddrMsg>(body).addr));
      return R();
    case Request::kSetVringBase:
      ICEBLK_TRY(on_set_vring_base(std::get<VringStateMsg>(body).state));
      return R();
    case Request::kGetVringBase: {
      ICEBLK_ASSIGN_OR_RETURN(Reply rep, on_get_vring_base(std::get<VringStateMsg>(body).state));
      return R(std::move(rep));
    }
    case Request::kSetVringKick:
      ICEBLK_TRY(on_set_vring_kick(std::get<VringFdMsg>(body)));
      return R();
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      ICEBLK_TRY(on_set_vring_call_err(req, std::get<VringFdMsg>(body)));
      return R();
    case Request::kSetVringEnable:
      ICEBLK_TRY(on_set_vring_enable(std::get<VringStateMsg>(body).state));
      return R();
    case Request::kGetQueueNum:
      return R(u64_reply(req, vrings_.size()));
    case Request::kGetConfig:
      return R(on_get_config(std::get<ConfigMsg>(body)));
    case Request::kSetConfig: {
      const auto& c = std::get<ConfigMsg>(body);
      if ((acked_protocol_features_ & pf_bit(kPfConfig)) == 0) {
        return fail(Errc::kProtocol, "SET_CONFIG without VHOST_USER_PROTOCOL_F_CONFIG");
      }
      ICEBLK_TRY(device_.set_config(c.offset, c.data, c.flags));
      return R();
    }
    case Request::kResetDevice:
      ICEBLK_TRY(on_reset_device());
      return R();
    case Request::kGetInflightFd:
      if ((acked_protocol_features_ & pf_bit(kPfInflightShmfd)) == 0) {
        return fail(Errc::kProtocol,
                    "GET_INFLIGHT_FD without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD");
      }
      return R(on_get_inflight_fd(std::get<InflightMsg>(body)));
    case Request::kSetInflightFd:
      if ((acked_protocol_features_ & pf_bit(kPfInflightShmfd)) == 0) {
        return fail(Errc::kProtocol,
                    "SET_INFLIGHT_FD without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD");
      }
      ICEBLK_TRY(on_set_inflight_fd(std::get<InflightMsg>(body)));
      return R();
    case Request::kSetStatus:
      ICEBLK_TRY(on_set_status(std::get<U64Payload>(body).value));
      return R();
    case Request::kGetStatus:
      if ((acked_protocol_features_ & pf_bit(kPfStatus)) == 0) {
        return fail(Errc::kProtocol, "GET_STATUS without VHOST_USER_PROTOCOL_F_STATUS");
      }
      return R(u64_reply(req, status_));
    default:
      // decode() only produces the requests above.
      return fail(Errc::kProtocol, "{}: not supported", request_name(req));
  }
}

Status Session::on_set_features(uint64_t v) {
  const uint64_t offered = offered_features();
  if ((v & ~offered) != 0) {
    return fail(Errc::kProtocol, "SET_FEATURES: acks features never offered (0x{:x})", v & ~offered);
  }
  if (v == acked_features_) return {};
  if (any_started()) {
    return fail(Errc::kBusy, "SET_FEATURES: cannot change features (0x{:x} -> 0x{:x}) while rings run",
                acked_features_, v);
  }
  ICEBLK_TRY(device_.set_features(v & ~kProtocolFeaturesBit));
  acked_features_ = v;
  return {};
}

Status Session::on_set_protocol_features(uint64_t v) {
  const uint64_t offered = offered_protocol_features();
  if ((v & ~offered) != 0) {
    return fail(Errc::kProtocol, "SET_PROTOCOL_FEATURES: acks protocol features never offered (0x{:x})",
                v & ~offered);
  }
  acked_protocol_features_ = v;
  return {};
}

Status Session::on_set_vring_num(const VringState& s) {
  ICEBLK_ASSIGN_OR_RETURN(Vring * v, vring(s.index, Request::kSetVringNum));
  if (v->worker) return fail(Errc::kBusy, "SET_VRING_NUM: vring {} is started", s.index);
  if (s.num == 0 || s.num > device_.max_queue_size() || !is_power_of_two(s.num)) {
    return fail(Errc::kInvalidArgument, "SET_VRING_NUM: vring {} size {} (must be a power of two <= {})", s.index,
                s.num, device_.max_queue_size());
  }
  v->size = static_cast<uint16_t>(s.num);
  return {};
}

Status Session::on_set_vring_addr(const VringAddr& a) {
  ICEBLK_ASSIGN_OR_RETURN(Vring * v, vring(a.index, Request::kSetVringAddr));
  if (v->worker) return fail(Errc::kBusy, "SET_VRING_ADDR: vring {} is started", a.index);
  if ((a.flags & kVringFLog) != 0) {
    return fail(Errc::kUnsupported, "SET_VRING_ADDR: vring {}: dirty logging (VHOST_VRING_F_LOG) not supported",
                a.index);
  }
  if (a.flags != 0) return fail(Errc::kInvalidArgument, "SET_VRING_ADDR: unknown flags 0x{:x}", a.flags);
  v->addr = a;
  v->addr_set = true;
  return {};
}

Status Session::on_set_vring_base(const VringState& s) {
  ICEBLK_ASSIGN_OR_RETURN(Vring * v, vring(s.index, Request::kSetVringBase));
  if (v->worker) return fail(Errc::kBusy, "SET_VRING_BASE: vring {} is started", s.index);
  // Split rings: bits 16-31 are reserved (packed rings are not offered).
  if (s.num > 0xffff) return fail(Errc::kInvalidArgument, "SET_VRING_BASE: base 0x{:x} has reserved bits", s.num);
  v->base = static_cast<uint16_t>(s.num);
  return {};
}

Result<Reply> Session::on_get_vring_base(const VringState& s) {
  ICEBLK_ASSIGN_OR_RETURN(Vring * v, vring(s.index, Request::kGetVringBase));
  // Stops the ring: the worker drains in-flight requests first (Backend::drain_queue).
  stop_ring(*v);
  VringState out{s.index, v->base};
  return Reply{static_cast<uint32_t>(Request::kGetVringBase),
               std::vector<uint8_t>(as_bytes_of(out).begin(), as_bytes_of(out).end()),
               {}};
}

Status Session::start_ring(uint16_t index, Vring& v, UniqueFd kick) {
  if (!mem_ || mem_->regions().empty()) {
    return fail(Errc::kInvalidArgument, "vring {}: cannot start before SET_MEM_TABLE", index);
  }
  if (v.size == 0) return fail(Errc::kInvalidArgument, "vring {}: cannot start before SET_VRING_NUM", index);
  if (!v.addr_set) return fail(Errc::kInvalidArgument, "vring {}: cannot start before SET_VRING_ADDR", index);
  // Ring addresses are front-end virtual addresses: translate to guest addresses.
  ICEBLK_ASSIGN_OR_RETURN(GuestAddr desc, mem_->user_to_guest(v.addr.desc_user_addr));
  ICEBLK_ASSIGN_OR_RETURN(GuestAddr avail, mem_->user_to_guest(v.addr.avail_user_addr));
  ICEBLK_ASSIGN_OR_RETURN(GuestAddr used, mem_->user_to_guest(v.addr.used_user_addr));
  virtio::QueueConfig cfg;
  cfg.size = v.size;
  cfg.desc = desc;
  cfg.avail = avail;
  cfg.used = used;
  cfg.event_idx = has_feature(acked_features_, virtio::kFeatureEventIdx);
  cfg.indirect = has_feature(acked_features_, virtio::kFeatureIndirectDesc);
  ICEBLK_ASSIGN_OR_RETURN(auto queue, virtio::SplitQueue::activate(cfg, mem_, v.base));
  if (inflight_ && index < inflight_->num_queues) {
    // INFLIGHT_SHMFD: requests a crashed back-end left unfinished are resubmitted
    // first (virtio/inflight.h).
    if (v.size != inflight_->queue_size) {
      return fail(Errc::kInvalidArgument,
                  "vring {}: size {} but the inflight region is for {} descriptors", index, v.size,
                  inflight_->queue_size);
    }
    virtio::InflightQueue tracker(
        inflight_->mapping->data() + index * virtio::inflight_queue_bytes(v.size), v.size,
        inflight_->mapping, inflight_->mapping.get());
    ICEBLK_ASSIGN_OR_RETURN(
        size_t resubmit, queue.attach_inflight(std::move(tracker)).map_error([&](const Error& e) {
          return make_error(e.code, "vring {}: {}", index, e.message);
        }));
    if (resubmit > 0) {
      spdlog::info("vring {}: resubmitting {} request(s) left in flight by the previous back-end",
                   index, resubmit);
    }
  }
  ICEBLK_ASSIGN_OR_RETURN(
      v.worker, VringWorker::start(index, device_, std::move(queue), std::move(kick), *v.notifier,
                                   effective_enabled(v), poisoned_fd_.get()));
  return {};
}

Status Session::on_set_vring_kick(VringFdMsg& m) {
  ICEBLK_ASSIGN_OR_RETURN(Vring * v, vring(m.index, Request::kSetVringKick));
  if (m.no_fd) {
    return fail(Errc::kUnsupported,
                "SET_VRING_KICK: vring {}: polling mode (no kick fd, VHOST_USER_VRING_NOFD_MASK) is not supported",
                m.index);
  }
  // A new kick fd for a running ring: restart it (state kept in v->base).
  stop_ring(*v);
  return start_ring(m.index, *v, std::move(m.fd));
}

Status Session::on_set_vring_call_err(Request req, VringFdMsg& m) {
  ICEBLK_ASSIGN_OR_RETURN(Vring * v, vring(m.index, req));
  // No fd (bit 8) = no notifications / errors reported for this ring.
  if (req == Request::kSetVringCall) {
    v->notifier->set_call(std::move(m.fd));
    // Signal the new call fd once, as libvhost-user does: a guest that missed an
    // interrupt while the back-end was away (crash, restart) wakes up and looks at
    // its used ring. A spurious interrupt is harmless.
    v->notifier->signal_call();
  } else {
    v->notifier->set_err(std::move(m.fd));
  }
  return {};
}

Status Session::on_set_vring_enable(const VringState& s) {
  ICEBLK_ASSIGN_OR_RETURN(Vring * v, vring(s.index, Request::kSetVringEnable));
  if (s.num > 1) return fail(Errc::kInvalidArgument, "SET_VRING_ENABLE: vring {}: value {}", s.index, s.num);
  v->enabled = s.num == 1;
  if (v->worker) v->worker->set_enabled(effective_enabled(*v));
  return {};
}

Reply Session::on_get_config(const ConfigMsg& m) {
  Reply rep{static_cast<uint32_t>(Request::kGetConfig), {}, {}};
  if ((acked_protocol_features_ & pf_bit(kPfConfig)) == 0) {
    ICEBLK_PEER_WARN("vhost-user GET_CONFIG without VHOST_USER_PROTOCOL_F_CONFIG negotiated: error reply");
    return rep;
  }
  auto r = device_.get_config(m.offset, m.size);
  if (!r || r->size() != m.size) {
    // Spec: a zero-length payload tells the front-end the request failed.
    ICEBLK_GUEST_ERROR("GET_CONFIG offset {} size {} refused: {}", m.offset, m.size,
                       r ? std::string("wrong size from device") : r.error().to_string());
    return rep;
  }
  ConfigHeader h{m.offset, m.size, m.flags};
  rep.payload.resize(sizeof h + r->size());
  std::memcpy(rep.payload.data(), &h, sizeof h);
  if (!r->empty()) std::memcpy(rep.payload.data() + sizeof h, r->data(), r->size());
  return rep;
}

Status Session::on_reset_device() {
  if ((acked_protocol_features_ & pf_bit(kPfResetDevice)) == 0) {
    return fail(Errc::kProtocol, "RESET_DEVICE without VHOST_USER_PROTOCOL_F_RESET_DEVICE");
  }
  // Spec: disable all rings and reset internal state; ownership is retained. The
  // inflight region goes too (QEMU fetches a new one after a reset).
  reset_rings();
  inflight_.reset();
  acked_features_ = 0;
  status_ = 0;
  device_.reset();
  return {};
}

Status Session::on_set_status(uint64_t v) {
  if ((acked_protocol_features_ & pf_bit(kPfStatus)) == 0) {
    return fail(Errc::kProtocol, "SET_STATUS without VHOST_USER_PROTOCOL_F_STATUS");
  }
  if (v > 0xff) return fail(Errc::kInvalidArgument, "SET_STATUS: 0x{:x} is not a status byte", v);
  status_ = static_cast<uint8_t>(v);
  if (status_ == 0) {
    stop_all();
    device_.reset();
  }
  return {};
}

}  // namespace iceblk::vhost_user
