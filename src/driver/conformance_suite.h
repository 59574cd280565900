// The conformance suite's internals, shared by conformance.cc (set-up, base and
// plain checks) and conformance_checks.cc (ICE, in-band and out-of-band keys).
#pragma once

#include "iceblk/conformance.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <cstring>
#include <memory>
#include <optional>
#include <random>

#include "base/le.h"
#include "base/secret_bytes.h"
#include "blk/wire.h"
#include "iceblk/keyslot_manager.h"
#include "driver/secure_world_client.h"
#include "ice/key_blob.h"
#include "iceblk/device.h"

namespace iceblk::driver::conformance {

constexpr uint8_t kOk = blk::kStatusOk;
constexpr uint8_t kIoErr = blk::kStatusIoErr;
constexpr uint8_t kUnsupp = blk::kStatusUnsupp;

inline const char* status_name(uint8_t s) {
  switch (s) {
    case kOk: return "OK";
    case kIoErr: return "IOERR";
    case kUnsupp: return "UNSUPP";
    case 0xff: return "no status written";
    default: return "invalid status";
  }
}

inline std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Independent reference cipher (OpenSSL EVP directly, not iceblk's engine).
using CtxPtr = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

inline bool evp_once(const EVP_CIPHER* c, std::span<const uint8_t> key, const uint8_t* iv, std::span<const uint8_t> in,
              uint8_t* out) {
  CtxPtr ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  int n = 0, m = 0;
  return ctx && EVP_EncryptInit_ex(ctx.get(), c, nullptr, key.data(), iv) == 1 &&
         EVP_CIPHER_CTX_set_padding(ctx.get(), 0) == 1 &&
         EVP_EncryptUpdate(ctx.get(), out, &n, in.data(), static_cast<int>(in.size())) == 1 &&
         EVP_EncryptFinal_ex(ctx.get(), out + n, &m) == 1;
}

// Encrypt `plain` as data units of `mode` starting at `dun` (spec §5 item 4).
inline std::optional<std::vector<uint8_t>> reference_encrypt(const ice::CryptoMode& mode, std::span<const uint8_t> key,
                                                      uint64_t dun, std::span<const uint8_t> plain) {
  std::vector<uint8_t> out(plain.size());
  const size_t dus = mode.data_unit_size;
  for (size_t off = 0; off < plain.size(); off += dus, ++dun) {
    uint8_t iv[16] = {};
    const uint64_t d = dun;
    std::memcpy(iv, &d, 8);
    auto in = plain.subspan(off, dus);
    bool ok = false;
    switch (mode.alg) {
      case ice::Algorithm::kAesXts:
        ok = evp_once(mode.key_size == ice::KeySize::k128 ? EVP_aes_128_xts() : EVP_aes_256_xts(), key, iv, in,
                      out.data() + off);
        break;
      case ice::Algorithm::kAesEcb:
        ok = evp_once(mode.key_size == ice::KeySize::k128 ? EVP_aes_128_ecb() : EVP_aes_256_ecb(), key, nullptr, in,
                      out.data() + off);
        break;
      case ice::Algorithm::kEssivAesCbc: {
        uint8_t salt[SHA256_DIGEST_LENGTH];
        SHA256(key.data(), key.size(), salt);
        uint8_t essiv[16];
        ok = evp_once(EVP_aes_256_ecb(), std::span<const uint8_t>(salt, sizeof salt), nullptr,
                      std::span<const uint8_t>(iv, 16), essiv) &&
             evp_once(EVP_aes_128_cbc(), key, essiv, in, out.data() + off);
        secure_zero(salt, sizeof salt);
        break;
      }
      default:
        return std::nullopt;
    }
    if (!ok) return std::nullopt;
  }
  return out;
}

inline std::vector<uint8_t> key_for(const ice::CryptoMode& mode, uint32_t seed) {
  auto len = ice::key_length(mode.alg, mode.key_size);
  auto k = pattern(len ? *len : 64, seed);
  return k;
}

class Suite {
 public:
  Suite(const ConformanceOptions& o, const std::function<void(const CheckResult&)>& cb) : opts_(o), cb_(cb) {}

  ConformanceReport report;

  void record(std::string name, Verdict v, std::string detail = {}) {
    CheckResult r{std::move(name), v, std::move(detail)};
    if (v == Verdict::kPass) ++report.passed;
    if (v == Verdict::kFail) ++report.failed;
    if (v == Verdict::kSkip) ++report.skipped;
    if (v == Verdict::kPass && !opts_.verbose) r.detail.clear();
    if (cb_) cb_(r);
    report.checks.push_back(std::move(r));
  }
  void pass(const std::string& n, std::string d = {}) { record(n, Verdict::kPass, std::move(d)); }
  void failed(const std::string& n, std::string d) { record(n, Verdict::kFail, std::move(d)); }
  void skip(const std::string& n, std::string d) { record(n, Verdict::kSkip, std::move(d)); }
  void check(const std::string& n, bool ok, std::string detail) {
    if (ok) pass(n, std::move(detail));
    else failed(n, std::move(detail));
  }

  Result<std::unique_ptr<Device>> open(bool ice, bool inband, uint16_t queues = 0) {
    ConnectOptions c;
    c.socket_path = opts_.socket_path;
    c.num_queues = queues;
    c.queue_size = 64;
    c.memory_size = 32 << 20;
    c.want_ice = ice;
    c.want_inband_keys = inband;
    c.secure_world_socket = opts_.secure_world_socket;
    c.reply_timeout_ms = 10000;
    return Device::connect(c);
  }

  // --- raw request helpers ----------------------------------------------------------
  Device* dev_ = nullptr;

  std::vector<uint8_t> hdr(uint32_t type, uint64_t sector, uint8_t slot = 0, uint8_t activate = 0, uint64_t dun = 0,
                           uint16_t r1 = 0, uint32_t r2 = 0) const {
    return blk::encode_header(dev_->header_size(), type, sector, slot, activate, dun, r1, r2);
  }
  // Status byte of a request, or 0xfe if the transport failed.
  uint8_t raw(std::vector<uint8_t> header, std::span<const uint8_t> out = {}, std::span<uint8_t> in = {},
              uint32_t* used = nullptr, uint16_t q = 0) {
    RawRequest r;
    r.queue = q;
    r.header = std::move(header);
    r.out = out;
    r.in = in;
    auto res = dev_->execute_raw(std::move(r));
    if (!res) {
      last_error_ = res.error().message;
      return 0xfe;
    }
    if (used) *used = res->used_len;
    return res->status;
  }
  std::string last_error_;

  // Expect a status; detail names both.
  void expect(const std::string& name, uint8_t want, uint8_t got, const std::string& extra = {}) {
    std::string d = fmt::format("expected {}, got {}", status_name(want), got == 0xfe ? last_error_ : status_name(got));
    if (!extra.empty()) d += " (" + extra + ")";
    check(name, want == got, d);
  }

  // Plain raw read/write of the medium through the current connection.
  bool medium_read(uint64_t off, std::span<uint8_t> buf) {
    return raw(hdr(blk::kTypeIn, off / 512), {}, buf) == kOk;
  }
  bool medium_write(uint64_t off, std::span<const uint8_t> buf) {
    return raw(hdr(blk::kTypeOut, off / 512), buf) == kOk;
  }

  // A failing write must leave the medium unchanged (spec §5.6).
  void expect_failed_write(const std::string& name, uint8_t want, uint64_t off, std::vector<uint8_t> header,
                           std::span<const uint8_t> data) {
    std::vector<uint8_t> before(data.size()), after(data.size());
    const bool can_check = off + data.size() <= capacity_ && medium_read(off, before);
    const uint8_t got = raw(std::move(header), data);
    if (got != want) {
      expect(name, want, got);
      return;
    }
    if (!can_check) {
      pass(name, fmt::format("{} (range beyond capacity, nothing to compare)", status_name(got)));
      return;
    }
    if (!medium_read(off, after)) {
      failed(name, "could not read the range back");
      return;
    }
    check(name, before == after, before == after ? "rejected, medium unchanged" : "rejected, but the medium changed");
  }

  // --- the checks ---------------------------------------------------------------------
  void base_checks(Device& d);
  void plain_checks();
  void ice_checks(Device& d);
  void inband_checks(Device& d);
  void outofband_checks();
  void no_inband_checks();

  const ConformanceOptions& opts_;
  const std::function<void(const CheckResult&)>& cb_;
  uint64_t capacity_ = 0;
  bool ice_offered_ = false;
  bool inband_offered_ = false;
};

}  // namespace iceblk::driver::conformance
