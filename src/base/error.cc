#include "base/error.h"

#include <cstring>

namespace iceblk {

std::string_view errc_name(Errc c) {
  switch (c) {
    case Errc::kInvalidArgument: return "invalid argument";
    case Errc::kOutOfRange: return "out of range";
    case Errc::kOverflow: return "overflow";
    case Errc::kMisaligned: return "misaligned";
    case Errc::kUnsupported: return "unsupported";
    case Errc::kNotFound: return "not found";
    case Errc::kPermissionDenied: return "permission denied";
    case Errc::kBusy: return "busy";
    case Errc::kIo: return "I/O error";
    case Errc::kProtocol: return "protocol error";
    case Errc::kClosed: return "closed";
    case Errc::kCrypto: return "crypto error";
    case Errc::kTimedOut: return "timed out";
  }
  return "unknown";
}

std::string Error::to_string() const { return fmt::format("{}: {}", errc_name(code), message); }

Error errno_error(Errc c, std::string_view what, int err) {
  char buf[128];
  const char* s = strerror_r(err, buf, sizeof buf);  // GNU variant returns char*
  return Error(c, fmt::format("{}: {}", what, s));
}

}  // namespace iceblk
