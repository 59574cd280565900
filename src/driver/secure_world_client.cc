#include "driver/secure_world_client.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <array>
#include <cstring>

#include "base/secret_bytes.h"
#include "base/unix_socket.h"
#include "ice/key_blob.h"

namespace iceblk::driver {

namespace sw = secure_world;

namespace {

// Zeroises a buffer that held key material when the scope ends.
template <size_t N>
struct WipeOnExit {
  std::array<uint8_t, N>& buf;
  ~WipeOnExit() { secure_zero(buf.data(), buf.size()); }
};

template <typename Payload>
void put_header(std::span<uint8_t> msg, sw::Op op) {
  sw::RequestHeader h;
  h.magic = sw::kMagic;
  h.op = static_cast<uint16_t>(op);
  h.reserved = 0;
  h.payload_len = static_cast<uint32_t>(sizeof(Payload));
  std::memcpy(msg.data(), &h, sizeof h);
}

}  // namespace

Result<SecureWorldClient> SecureWorldClient::connect(const std::string& socket_path,
                                                     Options opts) {
  auto fd = connect_unix(socket_path);
  if (!fd) return fail(fd.error().code, "secure world: {}", fd.error().message);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(opts.timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((opts.timeout.count() % 1000) * 1000);
  if (::setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      ::setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    return fail(errno_error(Errc::kIo, "setsockopt", errno));
  }
  return SecureWorldClient(std::move(*fd), opts.timeout);
}

Errc SecureWorldClient::errc_for(sw::WireStatus st) {
  switch (st) {
    case sw::WireStatus::kOk: break;
    case sw::WireStatus::kDenied: return Errc::kPermissionDenied;
    case sw::WireStatus::kInvalid: return Errc::kInvalidArgument;
    case sw::WireStatus::kUnsupported: return Errc::kUnsupported;
    case sw::WireStatus::kBadMessage: return Errc::kProtocol;
    case sw::WireStatus::kInternal: return Errc::kIo;
  }
  return Errc::kProtocol;
}

Status SecureWorldClient::send_all(std::span<const uint8_t> buf) {
  while (!buf.empty()) {
    const ssize_t n = ::send(fd_.get(), buf.data(), buf.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      fd_.reset();
      if (err == EPIPE || err == ECONNRESET) return fail(Errc::kClosed, "secure world closed");
      if (err == EAGAIN || err == EWOULDBLOCK) {
        return fail(Errc::kTimedOut, "the secure world took no request within {} ms (hung?)",
                    timeout_.count());
      }
      return fail(errno_error(Errc::kIo, "send to secure world", err));
    }
    buf = buf.subspan(static_cast<size_t>(n));
  }
  return {};
}

Status SecureWorldClient::recv_all(std::span<uint8_t> buf) {
  while (!buf.empty()) {
    const ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
    if (n == 0) {
      fd_.reset();
      return fail(Errc::kClosed, "secure world closed the connection");
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      fd_.reset();
      if (err == ECONNRESET) return fail(Errc::kClosed, "secure world closed the connection");
      if (err == EAGAIN || err == EWOULDBLOCK) {  // SO_RCVTIMEO
        return fail(Errc::kTimedOut, "no reply from the secure world within {} ms (hung?)",
                    timeout_.count());
      }
      return fail(errno_error(Errc::kIo, "receive from secure world", err));
    }
    buf = buf.subspan(static_cast<size_t>(n));
  }
  return {};
}

Result<size_t> SecureWorldClient::transact(sw::Op op, std::span<const uint8_t> msg,
                                           std::span<uint8_t> resp_payload) {
  if (!fd_) return fail(Errc::kClosed, "not connected to the secure world");
  auto named = [&](const Error& e) {
    return Error(e.code, fmt::format("{}: {}", sw::op_name(static_cast<uint16_t>(op)), e.message));
  };
  ICEBLK_TRY(send_all(msg).map_error(named));
  sw::ResponseHeader h;
  std::array<uint8_t, sw::kHeaderSize> raw{};
  ICEBLK_TRY(recv_all(raw).map_error(named));
  // TRUST: the service is trusted more than the guest, but a response is still
  // checked before its length is used.
  h = load_obj<sw::ResponseHeader>(raw.data());
  if (h.magic != sw::kMagic || h.op != static_cast<uint16_t>(op) ||
      h.payload_len > sw::kMaxPayloadLen) {
    fd_.reset();
    return fail(Errc::kProtocol, "malformed response from the secure world (op {}, len {})",
                h.op.get(), h.payload_len.get());
  }
  std::array<uint8_t, sw::kMaxPayloadLen> payload{};
  ICEBLK_TRY(recv_all(std::span(payload).first(h.payload_len)).map_error(named));
  const auto st = static_cast<sw::WireStatus>(h.status.get());
  if (st != sw::WireStatus::kOk) {
    if (st == sw::WireStatus::kBadMessage) fd_.reset();
    return fail(errc_for(st), "secure world: {} {}", sw::op_name(h.op),
                sw::status_name(st));
  }
  if (h.payload_len != resp_payload.size()) {
    fd_.reset();
    return fail(Errc::kProtocol, "secure world: {} response payload is {} bytes, expected {}",
                sw::op_name(h.op), h.payload_len.get(), resp_payload.size());
  }
  if (!resp_payload.empty()) {
    std::memcpy(resp_payload.data(), payload.data(), resp_payload.size());
  }
  return resp_payload.size();
}

Status SecureWorldClient::set_key(PhysSlot slot,
                                  std::span<const uint8_t, ice::kKeyBlobSize> blob) {
  std::array<uint8_t, sw::kHeaderSize + sizeof(sw::SetKeyPayload)> msg{};
  WipeOnExit<msg.size()> wipe{msg};
  put_header<sw::SetKeyPayload>(msg, sw::Op::kSetKey);
  const le32 s(slot.value);
  std::memcpy(msg.data() + sw::kHeaderSize, &s, sizeof s);
  std::memcpy(msg.data() + sw::kHeaderSize + offsetof(sw::SetKeyPayload, blob), blob.data(),
              blob.size());
  ICEBLK_TRY(transact(sw::Op::kSetKey, msg, {}));
  return {};
}

Status SecureWorldClient::set_key(PhysSlot slot, const ice::CryptoMode& mode,
                                  std::span<const uint8_t> key) {
  std::array<uint8_t, ice::kKeyBlobSize> blob{};
  WipeOnExit<blob.size()> wipe{blob};
  ICEBLK_TRY(ice::encode_key_blob(mode, key, blob));
  return set_key(slot, blob);
}

Status SecureWorldClient::invalidate_key(PhysSlot slot) {
  std::array<uint8_t, sw::kHeaderSize + sizeof(sw::SlotPayload)> msg{};
  put_header<sw::SlotPayload>(msg, sw::Op::kInvalidateKey);
  const le32 s(slot.value);
  std::memcpy(msg.data() + sw::kHeaderSize, &s, sizeof s);
  ICEBLK_TRY(transact(sw::Op::kInvalidateKey, msg, {}));
  return {};
}

Result<ice::SlotRange> SecureWorldClient::query_range() {
  std::array<uint8_t, sw::kHeaderSize> msg{};
  sw::RequestHeader h;
  h.magic = sw::kMagic;
  h.op = static_cast<uint16_t>(sw::Op::kQueryRange);
  h.reserved = 0;
  h.payload_len = 0;
  std::memcpy(msg.data(), &h, sizeof h);
  std::array<uint8_t, sizeof(sw::RangePayload)> out{};
  ICEBLK_TRY(transact(sw::Op::kQueryRange, msg, out));
  const auto rp = load_obj<sw::RangePayload>(out.data());
  return ice::SlotRange{rp.slot_offset, rp.max_slots};
}

}  // namespace iceblk::driver
