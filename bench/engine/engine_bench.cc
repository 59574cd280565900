// The engine's cipher next to raw OpenSSL, measured side by side in one run.
// Not a test: prints numbers only. Times are CPU time of this thread
// (CLOCK_THREAD_CPUTIME_ID), so a loaded, shared machine slows the wall clock but
// not the ratios much; configurations are interleaved round by round and the
// median is printed.
//
// Table 1, AES-256-XTS encrypt of one buffer, per data unit size:
//   engine   Engine::crypt (slot lookup, key cache, per-unit re-IV through the
//            provider's dispatch table, see src/ice/crypt_context.cc);
//   raw EVP  one EVP context keyed once; per data unit EVP_EncryptInit_ex2 with a
//            NULL cipher and key (only the IV) and EVP_EncryptUpdate: the usual
//            "cheap" re-IV on OpenSSL 3;
//   ceiling  the same bytes as ONE data unit in one EVP_EncryptUpdate: the AES work
//            alone, no per-unit cost (not a valid layout, a bound).
//
// Table 2, the data path's pass over a request (4 KiB units, the request in guest
// pages: 4 KiB iovecs starting 512 bytes into a page, so every unit straddles two):
//   copy+crypt  what the queue processor did before: memcpy the iovecs into a
//               bounce buffer, then encrypt it in place;
//   sg          CryptContext::crypt from the iovecs straight into the bounce buffer
//               (the crypt pass is the copy);
//   sg aligned  the same with page-aligned iovecs (no unit straddles);
//   in place    decrypt in place in a flat buffer: the cipher cost of "preadv into
//               guest memory, then decrypt there" (the read itself is the same copy
//               either way, so this is the whole difference).
//
//   engine_bench [rounds=7] [buffer_kib=128]
#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "ice/engine.h"

namespace {

using namespace iceblk;

constexpr double kSecondsPerRun = 0.25;

double cpu_now() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// Runs `step` (one buffer) repeatedly for ~kSecondsPerRun of CPU; returns MiB/s.
double measure(size_t bytes_per_step, const std::function<void()>& step) {
  for (int i = 0; i < 8; ++i) step();  // warm-up (caches, key schedule)
  uint64_t steps = 0;
  const double t0 = cpu_now();
  double elapsed = 0;
  do {
    for (int i = 0; i < 16; ++i) step();
    steps += 16;
    elapsed = cpu_now() - t0;
  } while (elapsed < kSecondsPerRun);
  return static_cast<double>(steps * bytes_per_step) / elapsed / (1024.0 * 1024.0);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Interleaves the configurations round by round; returns each one's median MiB/s.
std::vector<double> run_side_by_side(int rounds, size_t bytes,
                                     const std::vector<std::function<void()>>& steps) {
  std::vector<std::vector<double>> rates(steps.size());
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < steps.size(); ++i) rates[i].push_back(measure(bytes, steps[i]));
  }
  std::vector<double> out;
  for (auto& v : rates) out.push_back(median(v));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 7;
  const size_t buf_size = (argc > 2 ? std::max(8, std::atoi(argv[2])) : 128) * size_t{1024};

  std::array<uint8_t, 64> key_bytes{};
  RAND_bytes(key_bytes.data(), key_bytes.size());
  key_bytes[0] = static_cast<uint8_t>(key_bytes[32] ^ 1);  // halves differ

  auto engine_r = ice::Engine::create({});
  if (!engine_r) {
    fmt::print(stderr, "engine: {}\n", engine_r.error().to_string());
    return 1;
  }
  auto& engine = **engine_r;

  EVP_CIPHER* xts = EVP_CIPHER_fetch(nullptr, "AES-256-XTS", nullptr);
  EVP_CIPHER_CTX* raw = EVP_CIPHER_CTX_new();
  if (xts == nullptr || raw == nullptr ||
      EVP_EncryptInit_ex2(raw, xts, key_bytes.data(), nullptr, nullptr) != 1) {
    fmt::print(stderr, "OpenSSL AES-256-XTS setup failed\n");
    return 1;
  }

  std::vector<uint8_t> buf(buf_size);
  RAND_bytes(buf.data(), static_cast<int>(buf.size()));
  bool ok = true;

  fmt::print("AES-256-XTS encrypt, {} KiB buffers, median of {} rounds x {:.2f} s CPU each\n",
             buf_size / 1024, rounds, kSecondsPerRun);
  fmt::print("{:>6}  {:>12}  {:>12}  {:>12}  {:>10}  {:>14}\n", "unit", "engine MiB/s", "raw EVP",
             "ceiling", "engine/raw", "engine/ceiling");
  for (uint32_t dus : {512u, 4096u}) {
    auto key = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, dus}, key_bytes);
    if (!key || !engine.program(PhysSlot(7), std::move(*key))) {
      fmt::print(stderr, "programming the key failed\n");
      return 1;
    }
    ice::CryptContext ctx;
    uint64_t dun = 0;
    const uint64_t units = buf.size() / dus;
    auto engine_step = [&] {
      ok &= engine.crypt(ctx, PhysSlot(7), ice::Direction::kEncrypt, Dun(dun), buf).has_value();
      dun += units;
    };
    auto raw_step = [&] {
      std::array<uint8_t, 16> iv{};
      for (uint64_t i = 0; i < units; ++i) {
        const uint64_t d = dun + i;
        std::memcpy(iv.data(), &d, 8);
        uint8_t* p = buf.data() + i * dus;
        int out = 0;
        ok &= EVP_EncryptInit_ex2(raw, nullptr, nullptr, iv.data(), nullptr) == 1;
        ok &= EVP_EncryptUpdate(raw, p, &out, p, static_cast<int>(dus)) == 1;
      }
      dun += units;
    };
    auto ceiling_step = [&] {
      std::array<uint8_t, 16> iv{};
      std::memcpy(iv.data(), &dun, 8);
      int out = 0;
      ok &= EVP_EncryptInit_ex2(raw, nullptr, nullptr, iv.data(), nullptr) == 1;
      ok &= EVP_EncryptUpdate(raw, buf.data(), &out, buf.data(), static_cast<int>(buf.size())) == 1;
      ++dun;
    };
    const auto r = run_side_by_side(rounds, buf.size(), {engine_step, raw_step, ceiling_step});
    fmt::print("{:>6}  {:>12.1f}  {:>12.1f}  {:>12.1f}  {:>10.3f}  {:>14.3f}\n", dus, r[0], r[1],
               r[2], r[0] / r[1], r[0] / r[2]);
  }

  // Table 2: the request's one pass.
  constexpr uint32_t kUnit = 4096;
  auto key = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, kUnit}, key_bytes);
  if (!key) return 1;
  const ice::ProgrammedKey pk(std::move(*key), 1);
  ice::CryptContext ctx;
  const size_t pages = buf_size / kUnit + 1;
  std::vector<uint8_t> guest((pages + 1) * kUnit);
  RAND_bytes(guest.data(), static_cast<int>(guest.size()));
  std::vector<uint8_t> bounce(buf_size);
  auto page_iovs = [&](size_t shift) {
    std::vector<iovec> v;
    for (size_t off = 0; off < buf_size; off += kUnit) {
      v.push_back({guest.data() + shift + off, kUnit});
    }
    return v;
  };
  const std::vector<iovec> odd = page_iovs(512), aligned = page_iovs(0);
  uint64_t dun = 0;
  auto copy_crypt = [&] {
    size_t o = 0;
    for (const iovec& v : odd) {
      std::memcpy(bounce.data() + o, v.iov_base, v.iov_len);
      o += v.iov_len;
    }
    ok &= ctx.crypt(pk, ice::Direction::kEncrypt, Dun(dun++), bounce).has_value();
  };
  const iovec flat{bounce.data(), bounce.size()};
  auto sg = [&](const std::vector<iovec>& src) {
    return [&, src_ptr = &src] {
      ok &=
          ctx.crypt(pk, ice::Direction::kEncrypt, Dun(dun++), *src_ptr, 0, {&flat, 1}, 0, buf_size)
              .has_value();
    };
  };
  auto in_place = [&] {
    ok &= ctx.crypt(pk, ice::Direction::kDecrypt, Dun(dun++), bounce).has_value();
  };
  const auto r = run_side_by_side(rounds, buf_size, {copy_crypt, sg(odd), sg(aligned), in_place});
  fmt::print("\nOne pass over a {} KiB request in 4 KiB guest pages (4 KiB units), MiB/s\n",
             buf_size / 1024);
  fmt::print("{:>12}  {:>12}  {:>12}  {:>12}  {:>12}  {:>14}\n", "copy+crypt", "sg", "sg aligned",
             "in place", "sg/copy+crypt", "sg/in place");
  fmt::print("{:>12.1f}  {:>12.1f}  {:>12.1f}  {:>12.1f}  {:>12.3f}  {:>14.3f}\n", r[0], r[1], r[2],
             r[3], r[1] / r[0], r[1] / r[3]);
  if (!ok) {
    fmt::print(stderr, "a crypt call failed\n");
    return 1;
  }
  EVP_CIPHER_CTX_free(raw);
  EVP_CIPHER_free(xts);
  return 0;
}
