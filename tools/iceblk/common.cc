#include "common.h"

#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

namespace iceblk::cli {

Result<std::unique_ptr<driver::Device>> open_device(const DeviceOptions& o) {
  if (o.socket.empty()) return fail(Errc::kInvalidArgument, "--socket is required");
  struct stat st {};
  if (::stat(o.socket.c_str(), &st) != 0) {
    return fail(Errc::kNotFound, "no device socket at {} (is the device daemon running?)", o.socket);
  }
  if (!S_ISSOCK(st.st_mode)) return fail(Errc::kInvalidArgument, "{} is not a unix socket", o.socket);
  driver::ConnectOptions c;
  c.socket_path = o.socket;
  c.num_queues = o.queues;
  c.queue_size = o.queue_size;
  c.want_ice = !o.plain;
  c.completion = o.poll ? driver::CompletionMode::kPoll : driver::CompletionMode::kInterrupt;
  c.memory_size = o.memory;
  c.secure_world_socket = o.secure_world;
  if (c.secure_world_socket.empty()) {
    const std::string def = o.socket + ".sw";
    if (::stat(def.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) c.secure_world_socket = def;
  }
  auto d = driver::Device::connect(c);
  if (!d) {
    // A secure-world socket that is there but refuses: retry without it so that
    // commands that need no keys still work; key programming then names the problem.
    return fail(d.error().code, "cannot use the device at {}: {}", o.socket, d.error().message);
  }
  return d;
}

Result<ice::CryptoMode> crypto_mode(const CryptOptions& c) {
  auto a = ice::parse_algorithm(c.algorithm);
  if (!a) return fail(Errc::kInvalidArgument, "unknown --algorithm '{}': {}", c.algorithm, a.error().message);
  ice::CryptoMode m{a->first, a->second, c.data_unit_size};
  if (auto v = ice::validate_mode(m); !v) {
    return fail(Errc::kInvalidArgument, "--algorithm {} --data-unit-size {}: {}", c.algorithm, c.data_unit_size,
                v.error().message);
  }
  return m;
}

Result<SecretBytes> random_key(const ice::CryptoMode& mode) {
  ICEBLK_ASSIGN_OR_RETURN(size_t need, ice::key_length(mode.alg, mode.key_size));
  SecretBytes k(need);
  for (;;) {
    if (RAND_bytes(k.mutable_view().data(), static_cast<int>(need)) != 1) {
      return fail(Errc::kCrypto, "RAND_bytes failed");
    }
    if (mode.alg != ice::Algorithm::kAesXts) break;
    auto v = k.view();
    if (!std::equal(v.begin(), v.begin() + static_cast<long>(need / 2), v.begin() + static_cast<long>(need / 2))) break;
  }
  return k;
}

Status install_key(driver::Device& dev, const ice::CryptoMode& mode, const SecretBytes& key, const std::string& name) {
  if (!dev.ice()) {
    return fail(Errc::kUnsupported,
                "encryption was asked, but the device does not offer inline encryption (VIRTIO_BLK_F_ICE)");
  }
  return dev.add_key(name, mode, key.view());
}

namespace {
uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

void fill_pattern(uint64_t seed, uint64_t offset, std::span<uint8_t> buf) {
  for (size_t i = 0; i < buf.size();) {
    const uint64_t pos = offset + i;
    const uint64_t word = splitmix(seed * 0x100000001b3ull ^ (pos / 8));
    buf[i] = static_cast<uint8_t>(word >> ((pos % 8) * 8));
    ++i;
  }
}

void progress(const std::string& line) {
  if (::isatty(STDERR_FILENO)) {
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void progress_done() {
  if (::isatty(STDERR_FILENO)) std::fprintf(stderr, "\n");
}

}  // namespace iceblk::cli
