// SecureWorld::Impl and its per-connection state, shared by secure_world.cc (event
// loop, lifecycle) and secure_world_service.cc (message handling, audit).
#pragma once

#include "secure_world/secure_world.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "base/log.h"
#include "base/secret_bytes.h"
#include "base/unique_fd.h"
#include "base/unix_socket.h"
#include "ice/key_blob.h"

namespace iceblk::secure_world {

namespace detail {

inline constexpr uint64_t kStopToken = 0;
inline constexpr uint64_t kListenerBase = 1;              // listener i has token kListenerBase + i
inline constexpr uint64_t kConnectionBase = 1ULL << 32;   // connections count up from here
inline constexpr size_t kInBufSize = kHeaderSize + kMaxPayloadLen;

// A listening socket whose file is removed when it goes away.
struct Listener {
  UniqueFd fd;
  std::string path;
  Listener() = default;
  Listener(UniqueFd f, std::string p) : fd(std::move(f)), path(std::move(p)) {}
  Listener(Listener&&) = default;
  Listener& operator=(Listener&&) = delete;
  ~Listener() {
    if (fd.valid()) ::unlink(path.c_str());
  }
};

Result<Listener> listen_on(const std::string& path, uint32_t mode);

struct Connection {
  size_t vm_index = 0;
  UniqueFd fd;
  // Holds at most one header + kMaxPayloadLen bytes, which may include key material:
  // consumed bytes are zeroised at once and the whole buffer on destruction.
  std::array<uint8_t, kInBufSize> in{};
  size_t in_len = 0;
  std::vector<uint8_t> out;  // queued responses (never secret)
  bool want_out = false;     // registered for EPOLLOUT instead of EPOLLIN
  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() { secure_zero(in.data(), in.size()); }
};

struct VmState {
  VmChannel channel;
  size_t connections = 0;
  std::unique_ptr<log::RateLimiter> log_limiter;
  uint64_t suppressed = 0;  // audit lines not logged since the last one that was
};

}  // namespace detail

using namespace detail;  // NOLINT: the implementation's own helpers
using detail::Connection;
using detail::Listener;
using detail::VmState;

struct SecureWorld::Impl {
  ice::Engine& engine;
  SecureWorldOptions opts;
  std::vector<VmState> vms;
  std::shared_ptr<spdlog::logger> logger;

  mutable std::mutex audit_mu;
  std::deque<AuditRecord> audit;

  // Owned by the controlling thread while stopped, by the loop thread while running.
  UniqueFd epoll_fd;
  UniqueFd stop_fd;
  std::vector<Listener> listeners;
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> conns;
  uint64_t next_conn_token = kConnectionBase;
  std::thread thread;
  std::atomic<bool> running{false};

  Impl(ice::Engine& e, SecureWorldOptions o) : engine(e), opts(std::move(o)) {}

  void audit_record(VmState& vm, uint16_t op, std::optional<uint32_t> slot,
                    WireStatus status, std::string detail);
  void run();
  void accept_all(size_t vm_index);
  void on_connection_event(uint64_t token, uint32_t events);
  // Parses and serves every complete message in c.in; false when the connection
  // must be closed (after a BAD_MESSAGE reply was queued).
  bool process_input(Connection& c);
  void serve(Connection& c, const RequestHeader& hdr, std::span<const uint8_t> payload);
  void bad_message(Connection& c, uint16_t op, std::string why);
  void queue_response(Connection& c, uint16_t op, WireStatus st, std::span<const uint8_t> payload);
  // Sends queued output; false if the peer is gone.
  bool flush(Connection& c);
  void close_connection(uint64_t token);
  void update_interest(uint64_t token, Connection& c);
  void teardown();
};

}  // namespace iceblk::secure_world
