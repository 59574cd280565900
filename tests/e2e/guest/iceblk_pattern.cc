// iceblk-pattern: writes, verifies and generates the e2e test's data pattern.
//
// The pattern is position-dependent: the 8-byte little-endian word at absolute
// byte offset o is splitmix64(seed ^ (o / 8) * golden). A write that lands at
// the wrong offset, a lost write, a stale read or a torn sector all show up as
// a mismatch, and `verify` names the first bad byte. The same static binary runs
// in the guest (against /dev/vda) and on the host (against the image file), so
// both sides check the same bytes independently.
//
//   iceblk-pattern gen    SEED OFFSET LEN            pattern bytes to stdout
//   iceblk-pattern write  SEED OFFSET LEN PATH [direct]
//   iceblk-pattern verify SEED OFFSET LEN PATH [direct]
//
// OFFSET and LEN take an optional K/M/G suffix and must be multiples of 8
// (of 4096 with `direct`, which uses O_DIRECT). Exit 0 on success, 1 on a
// mismatch or I/O error, 2 on bad usage. Deliberately tiny and free of the
// project libraries: it is linked statically into the guest initramfs.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr std::uint64_t kChunk = 1U << 20;  // 1 MiB per I/O
constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

std::uint64_t splitmix64(std::uint64_t x) {
  x += kGolden;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Fills buf (len bytes, multiple of 8) with the pattern for absolute offset off.
void fill(std::uint64_t seed, std::uint64_t off, unsigned char* buf, std::uint64_t len) {
  for (std::uint64_t i = 0; i < len; i += 8) {
    std::uint64_t w = splitmix64(seed ^ (((off + i) / 8) * kGolden));
    for (int b = 0; b < 8; ++b) {
      buf[i + static_cast<std::uint64_t>(b)] = static_cast<unsigned char>(w >> (8 * b));
    }
  }
}

bool parse_size(const char* s, std::uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 0);
  if (errno != 0 || end == s) return false;
  std::uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1ULL << 10;
  if (*end == 'M' || *end == 'm') mul = 1ULL << 20;
  if (*end == 'G' || *end == 'g') mul = 1ULL << 30;
  if (mul != 1) ++end;
  if (*end != '\0') return false;
  if (v > UINT64_MAX / mul) return false;
  *out = static_cast<std::uint64_t>(v) * mul;
  return true;
}

int usage() {
  std::fprintf(stderr,
               "usage: iceblk-pattern gen SEED OFFSET LEN\n"
               "       iceblk-pattern write|verify SEED OFFSET LEN PATH [direct]\n");
  return 2;
}

bool full_pwrite(int fd, const unsigned char* buf, std::uint64_t len, std::uint64_t off) {
  std::uint64_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "iceblk-pattern: write at %" PRIu64 ": %s\n", off + done,
                   n < 0 ? std::strerror(errno) : "short write");
      return false;
    }
    done += static_cast<std::uint64_t>(n);
  }
  return true;
}

bool full_pread(int fd, unsigned char* buf, std::uint64_t len, std::uint64_t off) {
  std::uint64_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "iceblk-pattern: read at %" PRIu64 ": %s\n", off + done,
                   n < 0 ? std::strerror(errno) : "unexpected end of file");
      return false;
    }
    done += static_cast<std::uint64_t>(n);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return usage();
  const char* cmd = argv[1];
  std::uint64_t seed = 0;
  std::uint64_t off = 0;
  std::uint64_t len = 0;
  if (!parse_size(argv[2], &seed) || !parse_size(argv[3], &off) || !parse_size(argv[4], &len)) {
    return usage();
  }
  const bool is_gen = std::strcmp(cmd, "gen") == 0;
  const bool is_write = std::strcmp(cmd, "write") == 0;
  const bool is_verify = std::strcmp(cmd, "verify") == 0;
  if (!is_gen && !is_write && !is_verify) return usage();
  if (is_gen ? argc != 5 : (argc != 6 && argc != 7)) return usage();
  const bool direct = argc == 7 && std::strcmp(argv[6], "direct") == 0;
  if (argc == 7 && !direct) return usage();
  const std::uint64_t align = direct ? 4096 : 8;
  if (off % align != 0 || len % align != 0) {
    std::fprintf(stderr, "iceblk-pattern: offset and length must be multiples of %" PRIu64 "\n",
                 align);
    return 2;
  }

  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, 2 * kChunk) != 0) return 1;
  auto* buf = static_cast<unsigned char*>(mem);
  unsigned char* want = buf + kChunk;

  if (is_gen) {
    for (std::uint64_t pos = 0; pos < len; pos += kChunk) {
      const std::uint64_t n = len - pos < kChunk ? len - pos : kChunk;
      fill(seed, off + pos, buf, n);
      if (std::fwrite(buf, 1, n, stdout) != n) return 1;
    }
    return std::fflush(stdout) == 0 ? 0 : 1;
  }

  int flags = is_write ? O_WRONLY : O_RDONLY;
  if (direct) flags |= O_DIRECT;
  const int fd = open(argv[5], flags | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "iceblk-pattern: open %s: %s\n", argv[5], std::strerror(errno));
    return 1;
  }
  for (std::uint64_t pos = 0; pos < len; pos += kChunk) {
    const std::uint64_t n = len - pos < kChunk ? len - pos : kChunk;
    fill(seed, off + pos, want, n);
    if (is_write) {
      if (!full_pwrite(fd, want, n, off + pos)) return 1;
      continue;
    }
    if (!full_pread(fd, buf, n, off + pos)) return 1;
    if (std::memcmp(buf, want, n) != 0) {
      std::uint64_t i = 0;
      while (buf[i] == want[i]) ++i;
      std::uint64_t bad = 0;
      for (std::uint64_t j = 0; j < n; ++j) bad += buf[j] != want[j] ? 1 : 0;
      std::fprintf(stderr,
                   "iceblk-pattern: mismatch at byte %" PRIu64 " (sector %" PRIu64
                   "): got 0x%02x want 0x%02x; %" PRIu64 " bad bytes in this 1 MiB chunk\n",
                   off + pos + i, (off + pos + i) / 512, buf[i], want[i], bad);
      return 1;
    }
  }
  if (is_write && fsync(fd) != 0) {
    std::fprintf(stderr, "iceblk-pattern: fsync: %s\n", std::strerror(errno));
    return 1;
  }
  if (close(fd) != 0) return 1;
  return 0;
}
