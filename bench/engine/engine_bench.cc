// Engine vs raw OpenSSL: AES-256-XTS throughput of Engine::crypt (slot lookup, key
// cache, per-unit IV) next to a raw EVP loop (one context keyed once, per data unit
// set the IV and update) on the same buffers. Not a test: prints numbers only.
//
//   engine_bench [rounds=7] [buffer_kib=128]
#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ice/engine.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace iceblk;

constexpr double kSecondsPerRun = 0.25;

// Runs `step` (one buffer) repeatedly for ~kSecondsPerRun; returns MiB/s.
template <typename F>
double measure(size_t bytes_per_step, F&& step) {
  for (int i = 0; i < 8; ++i) step();  // warm-up (caches, key schedule)
  uint64_t steps = 0;
  const auto t0 = Clock::now();
  std::chrono::duration<double> elapsed{};
  do {
    for (int i = 0; i < 16; ++i) step();
    steps += 16;
    elapsed = Clock::now() - t0;
  } while (elapsed.count() < kSecondsPerRun);
  return static_cast<double>(steps * bytes_per_step) / elapsed.count() / (1024.0 * 1024.0);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 7;
  const size_t buf_size = (argc > 2 ? std::max(1, std::atoi(argv[2])) : 128) * size_t{1024};

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

  fmt::print("AES-256-XTS encrypt, {} KiB buffers, median of {} rounds x {:.2f} s\n",
             buf_size / 1024, rounds, kSecondsPerRun);
  fmt::print("{:>10}  {:>14}  {:>14}  {:>12}\n", "unit", "engine MiB/s", "raw MiB/s",
             "engine/raw");
  for (uint32_t dus : {512u, 4096u}) {
    auto key = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, dus}, key_bytes);
    if (!key || !engine.program(PhysSlot(7), std::move(*key))) {
      fmt::print(stderr, "programming the key failed\n");
      return 1;
    }
    ice::CryptContext ctx;
    uint64_t dun = 0;
    const uint64_t units = buf.size() / dus;
    bool ok = true;
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
    std::vector<double> e_rates, r_rates;
    for (int r = 0; r < rounds; ++r) {  // interleaved so drift hits both equally
      e_rates.push_back(measure(buf.size(), engine_step));
      r_rates.push_back(measure(buf.size(), raw_step));
    }
    if (!ok) {
      fmt::print(stderr, "a crypt call failed\n");
      return 1;
    }
    const double e = median(e_rates), r = median(r_rates);
    fmt::print("{:>10}  {:>14.1f}  {:>14.1f}  {:>12.3f}\n", dus, e, r, e / r);
  }
  EVP_CIPHER_CTX_free(raw);
  EVP_CIPHER_free(xts);
  return 0;
}
