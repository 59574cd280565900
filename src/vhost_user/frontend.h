// vhost-user front-end (the role QEMU plays): connects to a back-end's socket,
// negotiates features, hands over memfd memory and eventfds, and sets up rings.
// Used by the driver library, the CLI, the tests and the benchmarks.
//
// Every call is one request (plus its reply or REPLY_ACK ack when applicable) and
// is serialised by an internal mutex, so calls from several threads are safe.
// Errors name the message that failed ("vhost-user SET_VRING_ADDR: ..."):
//   kClosed          the back-end closed the socket (or did not answer in time)
//   kProtocol        the reply was malformed (wrong id, flags, size, fds)
//   kInvalidArgument the back-end refused the request (REPLY_ACK ack != 0)
//   kOutOfRange      GET_CONFIG answered with an empty payload (spec: error)
//   kUnsupported     the request needs a protocol feature that is not negotiated
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "vhost_user/connection.h"
#include "vhost_user/messages.h"

namespace iceblk::vhost_user {

// One region of memory shared with the back-end (e.g. DriverMemory: fd(), and
// guest_addr == user_addr == guest_base()).
struct SharedRegion {
  uint64_t guest_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;  // our "virtual" address for the region (ring addresses use it)
  uint64_t mmap_offset = 0;
  int fd = -1;  // borrowed; sent with SCM_RIGHTS
};

// Everything needed to start one split ring.
struct VringSetup {
  uint16_t size = 0;
  uint64_t desc_user_addr = 0;
  uint64_t avail_user_addr = 0;
  uint64_t used_user_addr = 0;
  uint16_t base = 0;  // next avail index
  int kick_fd = -1;   // borrowed eventfd we write to notify the device
  int call_fd = -1;   // borrowed eventfd the device writes; -1 = no interrupts
};

// An inflight I/O tracking region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD). The
// front-end keeps it across back-end restarts and hands it back to each new one.
struct InflightShm {
  UniqueFd fd;  // invalid (and mmap_size 0) when the back-end declined
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
  uint16_t num_queues = 0;
  uint16_t queue_size = 0;
};

class Frontend {
 public:
  struct Options {
    int reply_timeout_ms = 30000;  // how long to wait for a reply; -1 = forever
  };

  static Result<std::unique_ptr<Frontend>> connect(const std::string& socket_path);
  static Result<std::unique_ptr<Frontend>> connect(const std::string& socket_path, Options opts);

  struct Negotiated {
    uint64_t features = 0;           // acked virtio features (incl. bit 30 if offered)
    uint64_t protocol_features = 0;  // acked protocol features
    uint16_t num_queues = 1;         // GET_QUEUE_NUM (1 without MQ)
  };
  // GET_FEATURES, SET_OWNER, GET/SET_PROTOCOL_FEATURES (wanted & offered),
  // GET_QUEUE_NUM, SET_FEATURES(wanted & offered, keeping bit 30 when offered).
  Result<Negotiated> handshake(uint64_t wanted_features,
                               uint64_t wanted_protocol_features = kProtocolFeatures);

  // One message each.
  Result<uint64_t> get_features();
  Status set_features(uint64_t features);
  Result<uint64_t> get_protocol_features();
  Status set_protocol_features(uint64_t features);  // also turns REPLY_ACK use on/off
  Status set_owner();
  Status reset_owner();
  Result<uint64_t> get_queue_num();
  Result<uint64_t> get_max_mem_slots();
  Status set_mem_table(std::span<const SharedRegion> regions);  // 1..8 regions
  Status add_mem_reg(const SharedRegion& region);
  Status rem_mem_reg(const SharedRegion& region);  // sent without an fd
  Status set_vring_num(uint16_t q, uint16_t num);
  Status set_vring_addr(uint16_t q, uint64_t desc_user_addr, uint64_t avail_user_addr, uint64_t used_user_addr);
  Status set_vring_base(uint16_t q, uint16_t base);
  // Stops the ring (the back-end drains it first); returns its next avail index.
  Result<uint16_t> get_vring_base(uint16_t q);
  // fd -1 sets the "no fd" bit (kick: polling, which our back-end refuses).
  Status set_vring_kick(uint16_t q, int fd);
  Status set_vring_call(uint16_t q, int fd);
  Status set_vring_err(uint16_t q, int fd);
  Status set_vring_enable(uint16_t q, bool enable);
  Result<std::vector<uint8_t>> get_config(uint32_t offset, uint32_t size, uint32_t flags = 0);
  Status set_config(uint32_t offset, std::span<const uint8_t> data, uint32_t flags = 0);
  // INFLIGHT_SHMFD (needs the protocol feature): GET_INFLIGHT_FD asks the back-end
  // for a fresh region for `num_queues` rings of `queue_size`; SET_INFLIGHT_FD hands
  // one (fresh or kept from an earlier back-end) over before the rings start.
  Result<InflightShm> get_inflight_fd(uint16_t num_queues, uint16_t queue_size);
  Status set_inflight_fd(const InflightShm& shm);
  Status reset_device();
  Status set_status(uint8_t status);
  Result<uint8_t> get_status();

  // SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_CALL, SET_VRING_KICK
  // (starts the ring), then SET_VRING_ENABLE(1) when protocol features were acked.
  Status setup_vring(uint16_t q, const VringSetup& s);

  [[nodiscard]] uint64_t acked_features() const { return acked_features_; }
  [[nodiscard]] uint64_t acked_protocol_features() const { return acked_protocol_features_; }
  [[nodiscard]] bool reply_ack() const;

  // Raw access for tests (malformed input). Not synchronised with the calls above.
  Connection& connection() { return conn_; }

 private:
  Frontend(Connection c, Options o) : conn_(std::move(c)), opts_(o) {}

  // Send a request without its own reply; waits for the ack when REPLY_ACK is on.
  Status request(Request req, std::span<const uint8_t> payload, std::span<const int> fds = {});
  // Send a request and return the reply payload (checked id/flags; size checked by
  // `expected_size` unless nullopt).
  Result<std::vector<uint8_t>> call(Request req, std::span<const uint8_t> payload,
                                    std::optional<size_t> expected_size);
  Result<std::vector<uint8_t>> read_reply(Request req, std::optional<size_t> expected_size);
  // The same, keeping the reply's file descriptors (at most `max_fds`).
  Result<RawMessage> read_reply_raw(Request req, std::optional<size_t> expected_size,
                                    size_t max_fds);
  Result<uint64_t> call_u64(Request req);
  Status vring_fd(Request req, uint16_t q, int fd);

  std::mutex mu_;
  Connection conn_;
  Options opts_;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
};

}  // namespace iceblk::vhost_user
