// Per-connection vhost-user back-end state machine (QEMU docs/interop/vhost-user.rst).
//
// Transport-independent: handle() takes a decoded Message and returns the reply to
// send, so unit tests drive it without sockets; serve_connection() glues it to a
// Connection.
//
// Error policy for a request:
//  * Protocol violations (Errc::kProtocol: bad queue index, features acked that were
//    never offered, requests for un-negotiated features, ...) -> handle() returns the
//    error and the caller closes the connection.
//  * Refused requests (other errors: bad ring size, rings outside memory, mapping
//    failures, polling-mode kick fds, config writes refused by the device ...) are
//    logged; with REPLY_ACK negotiated and NEED_REPLY set the front-end gets ack 1,
//    GET_CONFIG gets a size-0 reply. The connection stays open.
//
// Guest memory that shrinks under the device (only possible when the device accepts
// unsealed memory): the SIGBUS is contained (memory/fault_guard.h), the rings that
// see the poisoned memory stop and write poisoned_fd(); serve_connection() wakes up
// on it and closes the connection, and handle() refuses every later message.
//
// Ring states (spec "Ring states"): a ring starts at SET_VRING_KICK (needs the memory
// table, SET_VRING_NUM and SET_VRING_ADDR first) and stops at GET_VRING_BASE after
// Backend::drain_queue. It is enabled by SET_VRING_ENABLE, or from the start when
// VHOST_USER_F_PROTOCOL_FEATURES was not negotiated.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "memory/guest_memory.h"
#include "vhost_user/backend.h"
#include "vhost_user/connection.h"
#include "vhost_user/messages.h"
#include "vhost_user/vring_worker.h"

namespace iceblk::vhost_user {

// Protocol features this session implements and always offers: kProtocolFeatures
// (messages.h), shared with the front-end.
// Offered only when Backend::protocol_features() asks for them.
inline constexpr uint64_t kSessionOptionalProtocolFeatures = pf_bit(kPfStatus);
// GET_MAX_MEM_SLOTS answer (same as libvhost-user / rust-vmm).
inline constexpr uint64_t kMaxMemSlots = 509;

// A reply to send: request id of the message answered, payload bytes. Header flags
// are always version | REPLY.
struct Reply {
  uint32_t request = 0;
  std::vector<uint8_t> payload;
  UniqueFd fd;  // sent with the reply when valid (GET_INFLIGHT_FD)
};

class Session {
 public:
  explicit Session(Backend& device);
  ~Session();  // stops workers (does not reset the device; see close())
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Process one request. nullopt = nothing to send. Error = close the connection.
  Result<std::optional<Reply>> handle(Message msg);

  // End of connection: stop every ring (draining it) and reset the device. Idempotent.
  void close();

  // Feature sets offered to the front-end.
  [[nodiscard]] uint64_t offered_features() const;
  [[nodiscard]] uint64_t offered_protocol_features() const;

  // Introspection (tests, logs).
  [[nodiscard]] uint64_t acked_features() const { return acked_features_; }
  [[nodiscard]] uint64_t acked_protocol_features() const { return acked_protocol_features_; }
  [[nodiscard]] bool owner() const { return owner_; }
  [[nodiscard]] bool ring_started(uint16_t q) const;
  [[nodiscard]] bool ring_enabled(uint16_t q) const;
  [[nodiscard]] std::shared_ptr<const memory::GuestMemory> memory() const { return mem_; }

  // True once a contained SIGBUS poisoned this connection's guest memory or inflight
  // region: the front-end shrank it. The connection must close.
  [[nodiscard]] bool poisoned() const;
  // Readable once a ring stopped on poisoned memory (-1 if no eventfd could be made).
  [[nodiscard]] int poisoned_fd() const { return poisoned_fd_.get(); }
  // The error that closes a poisoned connection.
  [[nodiscard]] Error poisoned_error() const;

 private:
  struct MemSlot {
    MemRegionDesc desc;
    std::shared_ptr<memory::Mapping> mapping;
  };
  // The inflight region of SET_INFLIGHT_FD (virtio/inflight.h): num_queues parts of
  // virtio::inflight_queue_bytes(queue_size) bytes each.
  struct InflightRegion {
    std::shared_ptr<memory::Mapping> mapping;
    uint16_t num_queues = 0;
    uint16_t queue_size = 0;
  };
  struct Vring {
    uint16_t size = 0;
    bool addr_set = false;
    VringAddr addr;
    uint16_t base = 0;
    bool enabled = false;  // by SET_VRING_ENABLE
    std::unique_ptr<VringNotifier> notifier = std::make_unique<VringNotifier>();
    std::unique_ptr<VringWorker> worker;
  };

  Result<std::optional<Reply>> dispatch(Message& msg);
  Result<Vring*> vring(uint32_t index, Request req);
  [[nodiscard]] bool effective_enabled(const Vring& v) const;
  [[nodiscard]] bool any_started() const;
  void stop_ring(Vring& v);
  void stop_all();
  void reset_rings();
  Status start_ring(uint16_t index, Vring& v, UniqueFd kick);
  Result<MemSlot> map_region(const MemRegionDesc& d, int fd) const;
  Status install_memory(std::vector<MemSlot> slots);
  // TRUST: a shared file from the front-end may be mapped only if [offset, offset +
  // size) lies inside it and it cannot shrink later (sealed F_SEAL_SHRINK, unless the
  // back-end accepts unsealed memory). `what` names it in errors.
  Status check_shared_file(int fd, uint64_t offset, uint64_t size, const std::string& what) const;
  Reply on_get_inflight_fd(const InflightMsg& m);
  Status on_set_inflight_fd(InflightMsg& m);

  Status on_set_features(uint64_t v);
  Status on_set_protocol_features(uint64_t v);
  Status on_set_mem_table(MemTableMsg& m);
  Status on_add_mem_reg(MemRegMsg& m);
  Status on_rem_mem_reg(const MemRegMsg& m);
  Status on_set_vring_num(const VringState& s);
  Status on_set_vring_addr(const VringAddr& a);
  Status on_set_vring_base(const VringState& s);
  Result<Reply> on_get_vring_base(const VringState& s);
  Status on_set_vring_kick(VringFdMsg& m);
  Status on_set_vring_call_err(Request req, VringFdMsg& m);
  Status on_set_vring_enable(const VringState& s);
  Reply on_get_config(const ConfigMsg& m);
  Status on_reset_device();
  Status on_set_status(uint64_t v);

  Backend& device_;
  UniqueFd poisoned_fd_;  // outlives the workers (they are stopped in ~Session)
  bool owner_ = false;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
  uint8_t status_ = 0;
  std::vector<MemSlot> slots_;
  std::shared_ptr<const memory::GuestMemory> mem_;
  std::vector<Vring> vrings_;
  std::optional<InflightRegion> inflight_;
  bool closed_ = false;
};

// Serve one accepted front-end until it disconnects, breaks the protocol, or
// `cancel_fd` becomes readable; then Session::close() (rings drained, device reset).
// Returns why the connection ended (kClosed for an orderly disconnect/cancel).
Status serve_connection(Backend& device, Connection& conn, int cancel_fd);  // in server.cc

}  // namespace iceblk::vhost_user
