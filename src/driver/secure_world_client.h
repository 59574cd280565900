// Client of the out-of-band key service (spec §7, docs/secure-world.md): what a guest
// driver's "secure monitor call" does in this model. One client = one connection to
// one VM's channel; the service knows the VM from the channel, so nothing here names
// a VM. Synchronous: each call sends one request and waits for its response.
//
// Errors (Error::code):
//   kPermissionDenied  DENIED: slot outside this VM's range
//   kInvalidArgument   INVALID: malformed blob / bad key (or a bad local argument)
//   kUnsupported       UNSUPPORTED: triple not advertised, key_type not raw
//   kProtocol          BAD_MESSAGE from the service, or a malformed response; the
//                      connection is closed afterwards
//   kIo                INTERNAL from the service, a socket error
//   kTimedOut          no reply within Options::timeout (the message names the request);
//                      the connection is closed afterwards
//   kClosed            the service closed the connection (or it was closed before)
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>

#include "base/result.h"
#include "base/strong_types.h"
#include "base/unique_fd.h"
#include "ice/crypto_mode.h"
#include "ice/engine.h"
#include "secure_world/wire.h"

namespace iceblk::driver {

class SecureWorldClient {
 public:
  struct Options {
    std::chrono::milliseconds timeout{5000};  // per send/receive; 0 = no limit
  };

  static Result<SecureWorldClient> connect(const std::string& socket_path, Options opts);
  static Result<SecureWorldClient> connect(const std::string& socket_path) {
    return connect(socket_path, Options{});
  }

  // Program physical `slot` with a ready-made 136-byte virtio_blk_ice_key blob.
  Status set_key(PhysSlot slot, std::span<const uint8_t, ice::kKeyBlobSize> blob);
  // Program physical `slot` with `mode` and raw `key` (the blob is built here and
  // zeroised after sending).
  Status set_key(PhysSlot slot, const ice::CryptoMode& mode, std::span<const uint8_t> key);
  // Evict and zeroise the key in physical `slot` (an empty slot is fine).
  Status invalidate_key(PhysSlot slot);
  // This VM's physical range [slot_offset, slot_offset + max_slots).
  Result<ice::SlotRange> query_range();

  // The Errc a service status maps to (see the table above). kOk is not an error.
  static Errc errc_for(secure_world::WireStatus st);

  [[nodiscard]] bool connected() const { return fd_.valid(); }

 private:
  SecureWorldClient(UniqueFd fd, std::chrono::milliseconds timeout)
      : fd_(std::move(fd)), timeout_(timeout) {}
  // Sends `msg` (header + payload), reads the response header and up to
  // `resp_payload.size()` bytes of payload; returns the payload length.
  Result<size_t> transact(secure_world::Op op, std::span<const uint8_t> msg,
                          std::span<uint8_t> resp_payload);
  Status send_all(std::span<const uint8_t> buf);
  Status recv_all(std::span<uint8_t> buf);

  UniqueFd fd_;
  std::chrono::milliseconds timeout_;
};

}  // namespace iceblk::driver
