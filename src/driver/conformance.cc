#include "driver/conformance_suite.h"

namespace iceblk::driver {

std::string format_check(const CheckResult& r) {
  const char* v = r.verdict == Verdict::kPass ? "PASS" : r.verdict == Verdict::kFail ? "FAIL" : "SKIP";
  if (r.detail.empty()) return fmt::format("{}  {}", v, r.name);
  return fmt::format("{}  {}: {}", v, r.name, r.detail);
}

namespace conformance {

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

}  // namespace conformance

Result<ConformanceReport> run_conformance(const ConformanceOptions& opts,
                                          const std::function<void(const CheckResult&)>& on_result) {
  conformance::Suite s(opts, on_result);
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
