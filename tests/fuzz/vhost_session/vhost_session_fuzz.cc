// libFuzzer target for the vhost-user session state machine (vhost_user::Session,
// src/vhost_user/session*.cc) fed whole message sequences, as a front-end sends them,
// with a real device (the session tests' EchoDevice) and real file descriptors made
// by the harness; rings that start get their worker thread, and guest memory the
// harness writes is what the workers read.
//
// Input layout:
//   [0]   device knobs: bit 0 offer the STATUS protocol feature; bit 1 deferred
//         completions (drain_queue completes); bit 2 accept unsealed memory
//   then ops until the input ends, each starting with one byte `op`:
//   op % 4 == 0, 1  a message:  [request % 45] [fds] [flags] [len lo] [len hi] then
//                   min(len % 512, rest) payload bytes. fds: (fds & 15) % 10 file
//                   descriptors of kind fds >> 4: 0 eventfd (one of four, so kicks can
//                   reach it), 1 the sealed 64 KiB memfd, 2 the unsealed 64 KiB memfd,
//                   3 a sealed memfd of one page, 4 a pipe, 5+ an fd of each kind in
//                   turn. flags: bit 7 set = the byte is the raw header flags, else
//                   version 1 plus NEED_REPLY when bit 0 is set.
//   op % 4 == 2     guest write: [off lo] [off hi] [n] then n bytes written at off into
//                   the sealed memfd (which the guest addresses see when it is mapped).
//   op % 4 == 3     kick: [q] signals eventfd q % 4.
//   A message whose handle() fails ends the sequence (the server closes the connection).
//
// Properties checked (__builtin_trap on violation), besides ASan/UBSan:
//   - after Session::close() no ring is started and the device was reset;
//   - every fd the harness passed is closed once the session is gone (none leaked);
//   - a reply answers the request it was for, and is at most 4 KiB.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "unit/vhost_user/echo_device.h"
#include "vhost_user/session.h"

namespace {

using namespace iceblk;
namespace vu = iceblk::vhost_user;

constexpr size_t kMemSize = 64 << 10;
constexpr size_t kNumKickFds = 4;

class FuzzDevice : public vu::testing::EchoDevice {
 public:
  FuzzDevice() : EchoDevice(2, 256) {}
  bool unsealed_ok = false;
  [[nodiscard]] bool accepts_unsealed_memory() const override { return unsealed_ok; }
};

int make_memfd(size_t size, bool seal) {
  const int fd = ::memfd_create("fuzz-guest", MFD_CLOEXEC | (seal ? MFD_ALLOW_SEALING : 0u));
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) __builtin_trap();
  if (seal && ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) != 0) __builtin_trap();
  return fd;
}

bool fd_open(int fd) {
  return ::fcntl(fd, F_GETFD) != -1;
}

// Descriptors the harness owns for one input; the session only ever gets dups.
struct Fds {
  int kick[kNumKickFds];
  int sealed, unsealed, small, pipe_r, pipe_w;
  uint8_t* guest;  // the harness's own mapping of `sealed`
  Fds() {
    for (auto& k : kick) k = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    sealed = make_memfd(kMemSize, true);
    unsealed = make_memfd(kMemSize, false);
    small = make_memfd(4096, true);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) __builtin_trap();
    pipe_r = p[0];
    pipe_w = p[1];
    void* m = ::mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_SHARED, sealed, 0);
    if (m == MAP_FAILED) __builtin_trap();
    guest = static_cast<uint8_t*>(m);
  }
  ~Fds() {
    ::munmap(guest, kMemSize);
    for (int k : kick) ::close(k);
    for (int f : {sealed, unsealed, small, pipe_r, pipe_w}) ::close(f);
  }
  Fds(const Fds&) = delete;
  Fds& operator=(const Fds&) = delete;
  int of_kind(unsigned kind, size_t i) const {
    switch (kind) {
      case 0:
        return kick[i % kNumKickFds];
      case 1:
        return sealed;
      case 2:
        return unsealed;
      case 3:
        return small;
      case 4:
        return pipe_r;
      default:
        return of_kind(static_cast<unsigned>(i % 5), i);
    }
  }
};

class Input {
 public:
  Input(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  [[nodiscard]] bool done() const { return pos_ >= n_; }
  uint8_t byte() { return pos_ < n_ ? d_[pos_++] : 0; }
  size_t u16() {  // little-endian
    const size_t lo = byte();
    return lo | size_t{byte()} << 8;
  }
  std::vector<uint8_t> bytes(size_t n) {
    n = std::min(n, n_ - pos_);
    std::vector<uint8_t> v(d_ + pos_, d_ + pos_ + n);
    pos_ += n;
    return v;
  }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // refused requests are logged: not the point here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Input in(data, size);
  const uint8_t knobs = in.byte();
  Fds fds;
  std::vector<int> passed;  // every dup handed to the session
  FuzzDevice dev;
  dev.extra_protocol_features = (knobs & 1) ? vu::pf_bit(vu::kPfStatus) : 0;
  dev.deferred = (knobs & 2) != 0;
  dev.unsealed_ok = (knobs & 4) != 0;
  {
    vu::Session session(dev);
    while (!in.done()) {
      const uint8_t op = in.byte();
      if (op % 4 == 2) {
        const size_t off = in.u16() % kMemSize;
        auto b = in.bytes(in.byte());
        const size_t n = std::min(b.size(), kMemSize - off);
        if (n > 0) std::memcpy(fds.guest + off, b.data(), n);
        continue;
      }
      if (op % 4 == 3) {
        const uint64_t one = 1;
        if (::write(fds.kick[in.byte() % kNumKickFds], &one, sizeof one) != sizeof one) {
          // eventfd counter full: harmless
        }
        continue;
      }
      vu::RawMessage raw;
      const uint32_t request = in.byte() % 45;
      const uint8_t fdspec = in.byte();
      const uint8_t flagbyte = in.byte();
      const size_t len = in.u16() % 512;
      raw.payload = in.bytes(len);
      const uint32_t flags =
          (flagbyte & 0x80) ? flagbyte : (vu::kVersion | ((flagbyte & 1) ? vu::kFlagNeedReply : 0));
      raw.header = vu::Header{request, flags, static_cast<uint32_t>(raw.payload.size())};
      const size_t nfds = (fdspec & 15) % (vu::kMaxFdsPerMessage + 2);
      for (size_t i = 0; i < nfds; ++i) {
        const int fd = ::fcntl(fds.of_kind(fdspec >> 4, i), F_DUPFD_CLOEXEC, 0);
        if (fd < 0) __builtin_trap();
        passed.push_back(fd);
        raw.fds.emplace_back(fd);
      }
      auto msg = vu::decode(std::move(raw));
      // The server closes the connection on an undecodable message; decode() has its own
      // target (vhost_messages), so here the sequence just goes on without it.
      if (!msg) continue;
      auto r = session.handle(std::move(*msg));
      if (!r) break;
      if (*r && ((*r)->request != request || (*r)->payload.size() > 4096)) __builtin_trap();
    }
    session.close();
    for (uint16_t q = 0; q < dev.num_queues(); ++q) {
      if (session.ring_started(q)) __builtin_trap();
    }
    if (dev.resets.load() == 0) __builtin_trap();
  }
  for (int fd : passed) {
    // A number reused by a later dup that was closed in turn is fine; one still open
    // is a descriptor the session kept after it was destroyed.
    if (fd_open(fd)) __builtin_trap();
  }
  return 0;
}
