#include "driver/conformance.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <cstring>
#include <memory>
#include <optional>
#include <random>

#include "base/le.h"
#include "base/secret_bytes.h"
#include "blk/wire.h"
#include "driver/keyslot_manager.h"
#include "driver/secure_world_client.h"
#include "ice/key_blob.h"
#include "iceblk/device.h"

namespace iceblk::driver {

std::string format_check(const CheckResult& r) {
  const char* v = r.verdict == Verdict::kPass ? "PASS" : r.verdict == Verdict::kFail ? "FAIL" : "SKIP";
  if (r.detail.empty()) return fmt::format("{}  {}", v, r.name);
  return fmt::format("{}  {}: {}", v, r.name, r.detail);
}

namespace {

constexpr uint8_t kOk = blk::kStatusOk;
constexpr uint8_t kIoErr = blk::kStatusIoErr;
constexpr uint8_t kUnsupp = blk::kStatusUnsupp;

const char* status_name(uint8_t s) {
  switch (s) {
    case kOk: return "OK";
    case kIoErr: return "IOERR";
    case kUnsupp: return "UNSUPP";
    case 0xff: return "no status written";
    default: return "invalid status";
  }
}

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Independent reference cipher (OpenSSL EVP directly, not iceblk's engine).
using CtxPtr = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

bool evp_once(const EVP_CIPHER* c, std::span<const uint8_t> key, const uint8_t* iv, std::span<const uint8_t> in,
              uint8_t* out) {
  CtxPtr ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  int n = 0, m = 0;
  return ctx && EVP_EncryptInit_ex(ctx.get(), c, nullptr, key.data(), iv) == 1 &&
         EVP_CIPHER_CTX_set_padding(ctx.get(), 0) == 1 &&
         EVP_EncryptUpdate(ctx.get(), out, &n, in.data(), static_cast<int>(in.size())) == 1 &&
         EVP_EncryptFinal_ex(ctx.get(), out + n, &m) == 1;
}

// Encrypt `plain` as data units of `mode` starting at `dun` (spec §5 item 4).
std::optional<std::vector<uint8_t>> reference_encrypt(const ice::CryptoMode& mode, std::span<const uint8_t> key,
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

std::vector<uint8_t> key_for(const ice::CryptoMode& mode, uint32_t seed) {
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

void Suite::base_checks(Device& d) {
  dev_ = &d;
  const auto& cfg = d.config();
  capacity_ = d.capacity_bytes();
  check("base.version_1", blk::has_feature(d.negotiated_features(), blk::kFeatureVersion1),
        "VIRTIO_F_VERSION_1 negotiated");
  check("base.config_read", capacity_ > 0 && !cfg.raw.empty(),
        fmt::format("{} config bytes, capacity {} sectors", cfg.raw.size(), cfg.capacity_sectors));
  {
    auto r = d.read_config(0, static_cast<uint32_t>(cfg.raw.size() + 1));
    check("base.config_beyond_end", !r,
          r ? fmt::format("GET_CONFIG of {} bytes answered with {} bytes, expected an error reply", cfg.raw.size() + 1,
                          r->size())
            : "error reply");
  }
  {
    std::array<uint8_t, blk::kIdBytes> id{};
    uint32_t used = 0;
    const uint8_t st = raw(hdr(blk::kTypeGetId, 0), {}, id, &used);
    expect("base.get_id", kOk, st, fmt::format("used len {}", used));
  }
  if (capacity_ < (1 << 20)) {
    failed("base.capacity", fmt::format("the suite needs at least 1 MiB, the device has {} bytes", capacity_));
    return;
  }
  // Round trips of several sizes (one and several segments).
  {
    bool ok = true;
    std::string why;
    for (size_t len : {512u, 4096u, 65536u, 262144u}) {
      auto p = pattern(len, static_cast<uint32_t>(len));
      std::vector<uint8_t> back(len);
      if (d.write(8192, p).has_value() && d.read(8192, back).has_value() && back == p) continue;
      ok = false;
      why = fmt::format("{} bytes did not read back", len);
      break;
    }
    check("base.read_write_roundtrip", ok, why);
  }
  {
    bool ok = true;
    for (uint16_t q = 0; q < d.num_queues(); ++q) {
      auto p = pattern(4096, 100 + q);
      std::vector<uint8_t> back(4096);
      ok = ok && d.write(uint64_t{q} * 4096 + 65536, p, q) && d.read(uint64_t{q} * 4096 + 65536, back, q) && back == p;
    }
    check("base.all_queues", ok, fmt::format("{} queues", d.num_queues()));
  }
  {
    // Many requests in flight at once.
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<std::future<Status>> fs;
    for (int i = 0; i < 48; ++i) bufs.push_back(pattern(4096, 1000 + i));
    for (int i = 0; i < 48; ++i) {
      Io io;
      io.op = Op::kWrite;
      io.offset = 131072 + uint64_t(i) * 4096;
      io.out = bufs[i];
      io.queue = static_cast<uint16_t>(i % d.num_queues());
      fs.push_back(d.submit(std::move(io)));
    }
    bool ok = true;
    for (auto& f : fs) ok = f.get().has_value() && ok;
    std::vector<uint8_t> back(48 * 4096);
    ok = ok && d.read(131072, back);
    for (int i = 0; ok && i < 48; ++i) ok = std::equal(bufs[i].begin(), bufs[i].end(), back.begin() + i * 4096);
    check("base.deep_queue", ok, "48 writes in flight, read back in one request");
  }
  if (d.has_feature(blk::kFeatureFlush)) {
    expect("base.flush", kOk, raw(hdr(blk::kTypeFlush, 0)));
  } else {
    skip("base.flush", "VIRTIO_BLK_F_FLUSH not offered");
  }
  if (d.has_feature(blk::kFeatureWriteZeroes)) {
    auto p = pattern(8192, 5);
    std::vector<uint8_t> back(8192, 0xaa);
    const bool ok = d.write(0x10000, p) && d.write_zeroes(0x10000, 8192) && d.read(0x10000, back) &&
                    std::all_of(back.begin(), back.end(), [](uint8_t b) { return b == 0; });
    check("base.write_zeroes", ok, "range reads back as zeros");
  } else {
    skip("base.write_zeroes", "VIRTIO_BLK_F_WRITE_ZEROES not offered");
  }
  if (d.has_feature(blk::kFeatureDiscard)) {
    check("base.discard", d.discard(0x10000, 8192).has_value(), "DISCARD of 8 KiB");
  } else {
    skip("base.discard", "VIRTIO_BLK_F_DISCARD not offered");
  }
  // Malformed requests.
  {
    std::vector<uint8_t> buf(4096);
    expect("bad.read_beyond_capacity", kIoErr, raw(hdr(blk::kTypeIn, capacity_ / 512), {}, buf));
    expect("bad.read_crossing_end", kIoErr, raw(hdr(blk::kTypeIn, capacity_ / 512 - 1), {}, buf));
    expect("bad.read_huge_sector", kIoErr, raw(hdr(blk::kTypeIn, UINT64_MAX / 256), {}, buf));
    auto p = pattern(8192, 77);
    expect_failed_write("bad.write_crossing_end_writes_nothing", kIoErr, capacity_ - 4096,
                        hdr(blk::kTypeOut, capacity_ / 512 - 8), p);
    std::vector<uint8_t> odd(1000);
    expect("bad.read_length_not_sector_multiple", kIoErr, raw(hdr(blk::kTypeIn, 0), {}, odd));
    expect_failed_write("bad.write_length_not_sector_multiple", kIoErr, 0x20000, hdr(blk::kTypeOut, 0x20000 / 512),
                        std::span(p).first(1000));
    expect("bad.unknown_type", kUnsupp, raw(hdr(99, 0)));
    expect("bad.unknown_type_with_data", kUnsupp, raw(hdr(77, 0), {}, buf));
  }
}

// Without bit 22: 16-byte header, and the ICE request types are unknown.
void Suite::plain_checks() {
  auto r = open(false, false, 1);
  if (!r) {
    failed("plain.connect", r.error().message);
    return;
  }
  Device& d = **r;
  dev_ = &d;
  check("plain.header_16", d.header_size() == 16 && !d.ice(), fmt::format("header {} bytes", d.header_size()));
  auto p = pattern(4096, 9);
  std::vector<uint8_t> back(4096);
  check("plain.roundtrip_16_byte_header", d.write(0x30000, p) && d.read(0x30000, back) && back == p, "");
  std::vector<uint8_t> caps(64 * 4);
  expect("plain.get_caps_unsupp", kUnsupp, raw(hdr(blk::kTypeGetCryptoCaps, 0), {}, caps), "type 28 without bit 22");
  std::array<uint8_t, ice::kKeyBlobSize> blob{};
  expect("plain.program_key_unsupp", kUnsupp, raw(hdr(blk::kTypeIceProgramKey, 0), blob), "type 29 without bit 22");
  expect("plain.evict_key_unsupp", kUnsupp, raw(hdr(blk::kTypeIceEvictKey, 0)), "type 31 without bit 22");
  if (ice_offered_) {
    // A 32-byte ICE header on a plain connection is a 16-byte header plus 16 data
    // bytes: a read of 16 bytes, not a multiple of 512 -> IOERR; it must never be
    // taken as encryption.
    blk::IceHdr h{};
    h.out.type = blk::kTypeOut;
    h.out.sector = 0x30000 / 512;
    h.ice.activate = 1;
    std::vector<uint8_t> hb(sizeof h);
    std::memcpy(hb.data(), &h, sizeof h);
    expect_failed_write("plain.ice_header_not_interpreted", kIoErr, 0x30000, hb, {});
  }
  dev_ = nullptr;
}

void Suite::ice_checks(Device& d) {
  dev_ = &d;
  const auto& cfg = d.config();
  check("ice.header_32", d.header_size() == 32, fmt::format("header {} bytes", d.header_size()));
  check("ice.config_slot_info", cfg.max_slots >= 1 && uint32_t{cfg.slot_offset} + cfg.max_slots <= 256,
        fmt::format("max_slots {}, slot_offset {}", cfg.max_slots, cfg.slot_offset));
  check("ice.config_capability_num", cfg.capability_num > 0, fmt::format("{} capabilities", cfg.capability_num));
  // GET_CONFIG sub-ranges (spec §2).
  if (cfg.raw.size() == blk::kConfigSize) {
    bool ok = true;
    std::string why;
    for (auto [off, len] : std::vector<std::pair<uint32_t, uint32_t>>{
             {0, 8}, {8, 4}, {20, 4}, {34, 2}, {96, 2}, {98, 2}, {96, 4}, {99, 1}, {50, 50}, {0, 100}}) {
      auto r = d.read_config(off, len);
      if (!r || r->size() != len || !std::equal(r->begin(), r->end(), cfg.raw.begin() + off)) {
        ok = false;
        why = fmt::format("GET_CONFIG({}, {}) {}", off, len, r ? "returned different bytes" : r.error().message);
        break;
      }
    }
    check("ice.config_subranges", ok, why);
    bool oor = true;
    for (auto [off, len] : std::vector<std::pair<uint32_t, uint32_t>>{{100, 1}, {99, 2}, {96, 8}, {0xffffffff, 2}}) {
      auto r = d.read_config(off, len);
      if (r) {
        oor = false;
        why = fmt::format("GET_CONFIG({}, {}) answered {} bytes", off, len, r->size());
        break;
      }
    }
    check("ice.config_out_of_range", oor, oor ? "" : why);
  } else {
    failed("ice.config_subranges", fmt::format("config space is {} bytes, expected 100", cfg.raw.size()));
  }
  // Capabilities (spec §4.1).
  std::vector<uint8_t> caps(cfg.capability_num * 4u);
  uint32_t used = 0;
  const uint8_t st = raw(hdr(blk::kTypeGetCryptoCaps, 0), {}, caps, &used);
  expect("ice.get_caps", kOk, st);
  bool xts128 = false, xts256 = false, well_formed = true;
  for (size_t i = 0; i + 4 <= caps.size(); i += 4) {
    auto c = load_obj<blk::CryptoCap>(caps.data() + i);
    if (c.alg == 0 && c.key_size == 1) xts128 = true;
    if (c.alg == 0 && c.key_size == 3) xts256 = true;
    if (c.reserved != 0 || c.data_unit_size_exp > 7) well_formed = false;
  }
  check("ice.caps_well_formed", well_formed, "reserved 0, data_unit_size_exp <= 7");
  check("ice.caps_aes_xts_128_and_256", xts128 && xts256, "spec §4.1: AES-XTS MUST support 128 and 256");
  {
    std::vector<uint8_t> shortbuf(caps.size() - 1);
    expect("ice.caps_short_buffer", kIoErr, raw(hdr(blk::kTypeGetCryptoCaps, 0), {}, shortbuf),
           fmt::format("{} bytes for {} entries", shortbuf.size(), cfg.capability_num));
  }
  // Requests that do not use the ice_payload ignore it (spec §3).
  {
    std::array<uint8_t, blk::kIdBytes> id{};
    expect("ice.payload_ignored_by_get_id", kOk, raw(hdr(blk::kTypeGetId, 0, 0xee, 7, 123, 5, 6), {}, id));
    if (d.has_feature(blk::kFeatureFlush)) {
      expect("ice.payload_ignored_by_flush", kOk, raw(hdr(blk::kTypeFlush, 0, 0xee, 9, 1, 1, 1)));
    }
  }
  // activate / reserved (spec §5): UNSUPP, nothing written.
  auto p = pattern(4096, 31);
  expect_failed_write("ice.activate_2_unsupp", kUnsupp, 0x40000, hdr(blk::kTypeOut, 0x40000 / 512, 0, 2), p);
  expect_failed_write("ice.reserved1_unsupp", kUnsupp, 0x40000, hdr(blk::kTypeOut, 0x40000 / 512, 0, 0, 0, 1), p);
  expect_failed_write("ice.reserved2_unsupp", kUnsupp, 0x40000, hdr(blk::kTypeOut, 0x40000 / 512, 0, 0, 0, 0, 1),
                      p);
  {
    std::vector<uint8_t> buf(4096);
    expect("ice.read_activate_255_unsupp", kUnsupp, raw(hdr(blk::kTypeIn, 0x40000 / 512, 0, 255), {}, buf));
  }
  // A 16-byte header is too short once bit 22 is negotiated (spec §3).
  {
    std::vector<uint8_t> h16 = hdr(blk::kTypeIn, 0);
    h16.resize(16);
    std::vector<uint8_t> buf(512);
    expect("ice.short_header_ioerr", kIoErr, raw(h16, {}, buf));
  }
  // The header may be split across descriptors ("any layout").
  {
    auto h = hdr(blk::kTypeOut, 0x48000 / 512);
    std::vector<uint8_t> tail(h.begin() + 16, h.end());
    h.resize(16);
    // header[0..16) in the first descriptor, the ice_payload at the start of `out`.
    std::vector<uint8_t> data = tail;
    data.insert(data.end(), p.begin(), p.end());
    const uint8_t s = raw(h, data);
    std::vector<uint8_t> back(4096);
    check("ice.split_header", s == kOk && medium_read(0x48000, back) && back == p,
          fmt::format("status {}", status_name(s)));
  }
}

// Encrypted I/O through in-band keys (bit 23): slots are virtual.
void Suite::inband_checks(Device& d) {
  dev_ = &d;
  const auto& cfg = d.config();
  const uint8_t slot = static_cast<uint8_t>(cfg.max_slots - 1);
  const auto& caps = d.capabilities();
  // Program-key blob errors (spec §6).
  auto blob_for = [](const ice::CryptoMode& m, std::span<const uint8_t> k) {
    std::array<uint8_t, ice::kKeyBlobSize> b{};
    (void)ice::encode_key_blob(m, k, b);
    return b;
  };
  const ice::CryptoMode xts{ice::Algorithm::kAesXts, ice::KeySize::k256, 4096};
  const auto key = key_for(xts, 1);
  auto good = blob_for(xts, key);
  auto prog = [&](std::span<const uint8_t> blob, uint8_t s) {
    RawRequest r;
    r.header = hdr(blk::kTypeIceProgramKey, 0, s);
    r.out = blob;
    r.secret = true;
    auto res = d.execute_raw(std::move(r));
    return res ? res->status : uint8_t{0xfe};
  };
  expect("inband.program_key", kOk, prog(good, slot));
  expect("inband.program_bad_slot", kIoErr, prog(good, cfg.max_slots));
  expect("inband.program_blob_135_bytes", kIoErr, prog(std::span(good).first(135), slot));
  {
    std::vector<uint8_t> longer(good.begin(), good.end());
    longer.push_back(0);
    expect("inband.program_blob_137_bytes", kIoErr, prog(longer, slot));
  }
  auto mutated = [&](auto f) {
    auto b = good;
    f(b);
    return b;
  };
  expect("inband.program_alg_bitlocker_unsupp", kUnsupp, prog(mutated([](auto& b) { b[0] = 1; }), slot));
  expect("inband.program_unknown_alg_unsupp", kUnsupp, prog(mutated([](auto& b) { b[0] = 9; }), slot));
  expect("inband.program_key_type_wrapped_unsupp", kUnsupp, prog(mutated([](auto& b) { b[3] = 1; }), slot));
  expect("inband.program_bad_dus_exp_unsupp", kUnsupp, prog(mutated([](auto& b) { b[1] = 8; }), slot));
  expect("inband.program_reserved_ioerr", kIoErr, prog(mutated([](auto& b) { b[6] = 1; }), slot));
  expect("inband.program_key_len_ioerr", kIoErr, prog(mutated([](auto& b) { b[4] = 32; }), slot));
  expect("inband.program_tail_nonzero_ioerr", kIoErr, prog(mutated([](auto& b) { b[8 + 100] = 1; }), slot));
  expect("inband.program_xts_equal_halves_ioerr", kIoErr,
         prog(mutated([](auto& b) { std::memcpy(&b[8 + 32], &b[8], 32); }), slot));
  // Encrypted I/O on the programmed slot.
  const uint64_t off = 0x80000;
  const uint64_t dun = off / 4096;
  auto plain = pattern(16384, 41);
  {
    const uint8_t s = raw(hdr(blk::kTypeOut, off / 512, slot, 1, dun), plain);
    std::vector<uint8_t> back(plain.size()), medium(plain.size());
    const uint8_t r = raw(hdr(blk::kTypeIn, off / 512, slot, 1, dun), {}, back);
    check("inband.encrypted_roundtrip", s == kOk && r == kOk && back == plain,
          fmt::format("write {}, read {}", status_name(s), status_name(r)));
    medium_read(off, medium);
    auto ref = reference_encrypt(xts, key, dun, plain);
    check("inband.ciphertext_is_aes_256_xts", ref && *ref == medium,
          "medium equals AES-256-XTS(plain, tweak = le64(dun)) computed with OpenSSL EVP");
    // Data unit i uses DUN dun + i: read unit 2 alone with DUN dun + 2.
    std::vector<uint8_t> unit(4096);
    const uint8_t u = raw(hdr(blk::kTypeIn, (off + 8192) / 512, slot, 1, dun + 2), {}, unit);
    check("inband.dun_per_data_unit", u == kOk && std::equal(unit.begin(), unit.end(), plain.begin() + 8192), "");
  }
  // Every advertised algorithm family at one data unit size, checked against EVP.
  {
    std::vector<std::string> bad;
    size_t n = 0;
    for (const auto& c : caps) {
      const ice::CryptoMode m = c.mode();
      if (m.data_unit_size != 4096 && m.data_unit_size != 512) continue;
      const auto k = key_for(m, 7 + static_cast<uint32_t>(c.alg) * 10 + static_cast<uint32_t>(c.key_size));
      const auto b = blob_for(m, k);
      const uint64_t o = 0xc0000 + n * 8192;
      const uint64_t du = 1000 + n;
      auto pl = pattern(8192, 50 + static_cast<uint32_t>(n));
      std::vector<uint8_t> back(8192), med(8192);
      ++n;
      const bool ok = prog(b, slot) == kOk && raw(hdr(blk::kTypeOut, o / 512, slot, 1, du), pl) == kOk &&
                      raw(hdr(blk::kTypeIn, o / 512, slot, 1, du), {}, back) == kOk && back == pl &&
                      medium_read(o, med);
      auto ref = reference_encrypt(m, k, du, pl);
      if (!ok || !ref || *ref != med) {
        bad.push_back(fmt::format("{}/{}", ice::algorithm_name(m.alg, m.key_size), m.data_unit_size));
      }
    }
    check("inband.every_capability_matches_evp", bad.empty() && n > 0,
          bad.empty() ? fmt::format("{} modes", n) : fmt::format("wrong for {}", fmt::join(bad, ", ")));
  }
  expect("inband.program_key_again", kOk, prog(good, slot));
  // Malformed encrypted I/O: nothing written.
  auto data = pattern(4096, 43);
  expect_failed_write("inband.misaligned_sector_ioerr", kIoErr, off + 512,
                      hdr(blk::kTypeOut, (off + 512) / 512, slot, 1, dun), data);
  expect_failed_write("inband.misaligned_length_ioerr", kIoErr, off, hdr(blk::kTypeOut, off / 512, slot, 1, dun),
                      std::span(data).first(512));
  expect_failed_write("inband.bad_slot_ioerr", kIoErr, off, hdr(blk::kTypeOut, off / 512, cfg.max_slots, 1, dun),
                      data);
  expect_failed_write("inband.slot_255_ioerr", kIoErr, off, hdr(blk::kTypeOut, off / 512, 255, 1, dun), data);
  {
    auto two = pattern(8192, 44);
    expect_failed_write("inband.dun_overflow_ioerr", kIoErr, off, hdr(blk::kTypeOut, off / 512, slot, 1, UINT64_MAX),
                        two);
    const uint8_t s = raw(hdr(blk::kTypeOut, off / 512, slot, 1, UINT64_MAX), data);
    expect("inband.dun_max_single_unit_ok", kOk, s);
  }
  // Eviction (spec §6): later encrypted I/O gets IOERR; evicting an empty slot is fine.
  expect("inband.evict_key", kOk, raw(hdr(blk::kTypeIceEvictKey, 0, slot)));
  expect_failed_write("inband.empty_slot_ioerr", kIoErr, off, hdr(blk::kTypeOut, off / 512, slot, 1, dun), data);
  {
    std::vector<uint8_t> b(4096);
    expect("inband.empty_slot_read_ioerr", kIoErr, raw(hdr(blk::kTypeIn, off / 512, slot, 1, dun), {}, b));
  }
  expect("inband.evict_empty_slot_ok", kOk, raw(hdr(blk::kTypeIceEvictKey, 0, slot)));
  expect("inband.evict_bad_slot_ioerr", kIoErr, raw(hdr(blk::kTypeIceEvictKey, 0, cfg.max_slots)));
  // Reset evicts in-band keys (spec §8).
  {
    const bool programmed = prog(good, slot) == kOk;
    Status rs = d.reset();
    std::vector<uint8_t> b(4096);
    const uint8_t s = rs ? raw(hdr(blk::kTypeIn, off / 512, slot, 1, dun), {}, b) : 0xfe;
    if (!rs) last_error_ = rs.error().message;
    check("inband.reset_evicts_keys", programmed && s == kIoErr,
          fmt::format("encrypted read after reset: {}", s == 0xfe ? last_error_ : status_name(s)));
  }
  // Keyslot manager reprograms after reset and with more keys than slots.
  {
    bool ok = true;
    const uint32_t nkeys = std::min<uint32_t>(cfg.max_slots + 2u, 40u);
    for (uint32_t i = 0; i < nkeys && ok; ++i) {
      ok = d.add_key(fmt::format("conf{}", i), xts, key_for(xts, 200 + i)).has_value();
    }
    for (uint32_t i = 0; i < nkeys && ok; ++i) {
      auto pl = pattern(4096, 300 + i);
      ok = d.write(0x100000 + uint64_t{i} * 4096, pl, KeyRef{fmt::format("conf{}", i), i}).has_value();
    }
    ok = ok && d.reset().has_value();
    for (uint32_t i = 0; i < nkeys && ok; ++i) {
      auto pl = pattern(4096, 300 + i);
      std::vector<uint8_t> back(4096);
      ok = d.read(0x100000 + uint64_t{i} * 4096, back, KeyRef{fmt::format("conf{}", i), i}).has_value() && back == pl;
    }
    for (uint32_t i = 0; i < nkeys; ++i) (void)d.remove_key(fmt::format("conf{}", i));
    check("inband.keyslot_manager_more_keys_than_slots_and_reset", ok,
          fmt::format("{} keys over {} slots, reset in between", nkeys, cfg.max_slots));
  }
}

// ICE without bit 23: PROGRAM/EVICT are UNSUPP; slots are physical.
void Suite::no_inband_checks() {
  auto r = open(true, false, 1);
  if (!r) {
    failed("oob.connect", r.error().message);
    return;
  }
  Device& d = **r;
  dev_ = &d;
  const auto& cfg = d.config();
  check("oob.header_32", d.ice() && d.header_size() == 32 && d.key_mode() == KeyMode::kOutOfBand,
        fmt::format("key mode {}", key_mode_name(d.key_mode())));
  std::array<uint8_t, ice::kKeyBlobSize> blob{};
  expect("oob.program_key_unsupp", kUnsupp, raw(hdr(blk::kTypeIceProgramKey, 0, cfg.slot_offset), blob),
         "type 29 without bit 23");
  expect("oob.evict_key_unsupp", kUnsupp, raw(hdr(blk::kTypeIceEvictKey, 0, cfg.slot_offset)),
         "type 31 without bit 23");
  auto data = pattern(4096, 61);
  const uint64_t off = 0x200000;
  expect_failed_write("oob.slot_above_range_ioerr", kIoErr, off,
                      hdr(blk::kTypeOut, off / 512, static_cast<uint8_t>(cfg.slot_offset + cfg.max_slots), 1, 0),
                      data);
  if (cfg.slot_offset > 0) {
    expect_failed_write("oob.slot_below_range_ioerr", kIoErr, off,
                        hdr(blk::kTypeOut, off / 512, static_cast<uint8_t>(cfg.slot_offset - 1), 1, 0), data);
  } else {
    skip("oob.slot_below_range_ioerr", "slot_offset is 0");
  }
  if (opts_.secure_world_socket.empty()) {
    skip("oob.secure_world", "no secure-world socket given (--secure-world)");
    dev_ = nullptr;
    return;
  }
  auto sw = SecureWorldClient::connect(opts_.secure_world_socket);
  if (!sw) {
    failed("oob.secure_world_connect", sw.error().message);
    dev_ = nullptr;
    return;
  }
  auto range = sw->query_range();
  check("oob.secure_world_range_matches_config",
        range && range->offset == cfg.slot_offset && range->count == cfg.max_slots,
        range ? fmt::format("secure world [{}, +{}), config [{}, +{})", range->offset, range->count, cfg.slot_offset,
                            cfg.max_slots)
              : range.error().message);
  const ice::CryptoMode xts{ice::Algorithm::kAesXts, ice::KeySize::k128, 512};
  const auto key = key_for(xts, 71);
  const uint8_t phys = static_cast<uint8_t>(cfg.slot_offset + cfg.max_slots - 1);
  {
    auto st = sw->set_key(PhysSlot{uint32_t{cfg.slot_offset} + cfg.max_slots}, xts, key);
    check("oob.secure_world_denies_foreign_slot", !st && st.error().code == Errc::kPermissionDenied,
          st ? "set-key outside the range succeeded" : st.error().message);
  }
  auto st = sw->set_key(PhysSlot{phys}, xts, key);
  check("oob.secure_world_set_key", st.has_value(), st ? "" : st.error().message);
  std::vector<uint8_t> back(4096), med(4096);
  const uint8_t w = raw(hdr(blk::kTypeOut, off / 512, phys, 1, 5), data);
  const uint8_t rd = raw(hdr(blk::kTypeIn, off / 512, phys, 1, 5), {}, back);
  check("oob.encrypted_roundtrip", w == kOk && rd == kOk && back == data,
        fmt::format("write {}, read {}", status_name(w), status_name(rd)));
  medium_read(off, med);
  auto ref = reference_encrypt(xts, key, 5, data);
  check("oob.ciphertext_is_aes_128_xts", ref && *ref == med, "512-byte data units, DUN 5..12, OpenSSL EVP");
  {
    Status rs = d.reset();
    std::fill(back.begin(), back.end(), 0);
    const uint8_t s = rs ? raw(hdr(blk::kTypeIn, off / 512, phys, 1, 5), {}, back) : 0xfe;
    check("oob.keys_survive_reset", s == kOk && back == data,
          rs ? fmt::format("encrypted read after reset: {}", status_name(s)) : rs.error().message);
  }
  (void)sw->invalidate_key(PhysSlot{phys});
  expect_failed_write("oob.invalidated_slot_ioerr", kIoErr, off, hdr(blk::kTypeOut, off / 512, phys, 1, 5), data);
  dev_ = nullptr;
}

}  // namespace

Result<ConformanceReport> run_conformance(const ConformanceOptions& opts,
                                          const std::function<void(const CheckResult&)>& on_result) {
  Suite s(opts, on_result);
  auto first = s.open(true, true);
  if (!first) return fail(first.error().code, "cannot connect to {}: {}", opts.socket_path, first.error().message);
  Device& d = **first;
  s.ice_offered_ = blk::has_feature(d.offered_features(), blk::kFeatureIce);
  s.inband_offered_ = blk::has_feature(d.offered_features(), blk::kFeatureIceInbandKeys);
  s.check("base.ice_bits_consistent", s.ice_offered_ || !s.inband_offered_,
          "bit 23 is only offered together with bit 22");
  s.base_checks(d);
  if (s.ice_offered_) {
    s.ice_checks(d);
  } else {
    for (const char* n : {"ice.header_32", "ice.config_subranges", "ice.get_caps", "ice.caps_short_buffer",
                          "ice.activate_2_unsupp", "ice.reserved1_unsupp", "ice.reserved2_unsupp"}) {
      s.skip(n, "VIRTIO_BLK_F_ICE not offered");
    }
  }
  if (s.inband_offered_) {
    s.inband_checks(d);
  } else {
    s.skip("inband.*", "VIRTIO_BLK_F_ICE_INBAND_KEYS not offered");
  }
  first->reset();
  s.plain_checks();
  if (s.ice_offered_) {
    s.no_inband_checks();
  } else {
    s.skip("oob.*", "VIRTIO_BLK_F_ICE not offered");
  }
  return std::move(s.report);
}

}  // namespace iceblk::driver
