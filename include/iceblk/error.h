// Error values shared by every module. Errors are values (see docs/architecture.md):
// no exceptions cross module boundaries; asserts guard only our own invariants.
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

namespace iceblk {

enum class Errc {
  kInvalidArgument,  // a caller-supplied value is malformed
  kOutOfRange,       // an index, address or length is outside what is allowed
  kOverflow,         // arithmetic on peer-controlled values would overflow
  kMisaligned,       // a length or offset is not a multiple of the required unit
  kUnsupported,      // a valid request this implementation does not offer
  kNotFound,         // e.g. an empty keyslot
  kPermissionDenied, // e.g. a slot outside the caller's range, a read-only device
  kBusy,             // resource in use (all keyslots busy, socket in use)
  kIo,               // the storage or the OS failed
  kProtocol,         // the peer violated a wire protocol
  kClosed,           // the peer went away
  kCrypto,           // the cipher library failed
  kTimedOut,         // no answer in time (a synchronous driver call; the request is abandoned)
};

std::string_view errc_name(Errc c);

// A typed error with a human-readable message. Messages never contain key bytes.
struct Error {
  Errc code;
  std::string message;

  Error(Errc c, std::string msg) : code(c), message(std::move(msg)) {}
  [[nodiscard]] std::string to_string() const;
};

template <typename... Args>
Error make_error(Errc c, fmt::format_string<Args...> f, Args&&... args) {
  return Error(c, fmt::format(f, std::forward<Args>(args)...));
}

// errno-based error: "what: strerror(errno)".
Error errno_error(Errc c, std::string_view what, int err);

}  // namespace iceblk
