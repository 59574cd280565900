// libFuzzer target for the vhost-user message decoder (vhost_user::decode), the
// first parser of front-end bytes (a trust boundary, docs/threat-model.md).
//
// Input layout:
//   [0]      number of file descriptors sent with the message (mod 10, so 0..9: one
//            more than the most a message may carry); the harness makes them as
//            eventfds, like the kick/call fds a front-end sends
//   [1..13)  the 12-byte header (native u32 request, flags, size)
//   [13..)   the payload (the header's size is the claim, these bytes the truth)
//
// Properties checked (__builtin_trap on violation), besides ASan/UBSan:
//   - a refusal is kProtocol or kUnsupported, never anything else;
//   - an accepted message keeps the header's request id and flags, and a header whose
//     size does not match the payload received is never accepted;
//   - every fd the harness made is closed once decode() returns, whatever it decided,
//     except those the accepted message owns (the caller closes them with it).
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vhost_user/messages.h"

namespace {

using namespace iceblk;
namespace vu = iceblk::vhost_user;

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 13) return 0;
  const size_t nfds = data[0] % (vu::kMaxFdsPerMessage + 2);
  vu::RawMessage raw;
  std::memcpy(&raw.header.request, data + 1, 4);
  std::memcpy(&raw.header.flags, data + 5, 4);
  std::memcpy(&raw.header.size, data + 9, 4);
  raw.payload.assign(data + 13, data + size);
  std::vector<int> made;
  for (size_t i = 0; i < nfds; ++i) {
    const int fd = ::eventfd(0, EFD_CLOEXEC);
    if (fd < 0) __builtin_trap();
    made.push_back(fd);
    raw.fds.emplace_back(fd);
  }
  const vu::Header header = raw.header;
  const size_t payload_len = raw.payload.size();
  {
    auto m = vu::decode(std::move(raw));
    if (!m) {
      if (m.error().code != Errc::kProtocol && m.error().code != Errc::kUnsupported) __builtin_trap();
    } else {
      if (static_cast<uint32_t>(m->request) != header.request) __builtin_trap();
      if (m->flags != header.flags) __builtin_trap();
      if (header.size != payload_len) __builtin_trap();
    }
  }  // the decoded message (and any fd it owns) is gone here
  for (int fd : made) {
    if (fd_open(fd)) __builtin_trap();  // leaked: decode neither closed nor handed it over
  }
  return 0;
}
