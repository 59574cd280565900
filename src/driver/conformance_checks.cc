// Conformance checks of the ICE: header, config, capabilities, in-band key blobs,
// encrypted I/O against a reference cipher, reset, out-of-band keys.
#include "driver/conformance_suite.h"

namespace iceblk::driver::conformance {

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
    for (auto [off, len] : std::vector<std::pair<uint32_t, uint32_t>>{{0, 8},
                                                                      {8, 4},
                                                                      {20, 4},
                                                                      {34, 2},
                                                                      {96, 2},
                                                                      {98, 2},
                                                                      {96, 4},
                                                                      {99, 1},
                                                                      {100, 4},
                                                                      {50, 54},
                                                                      {0, 104}}) {
      auto r = d.read_config(off, len);
      if (!r || r->size() != len || !std::equal(r->begin(), r->end(), cfg.raw.begin() + off)) {
        ok = false;
        why = fmt::format("GET_CONFIG({}, {}) {}", off, len, r ? "returned different bytes" : r.error().message);
        break;
      }
    }
    check("ice.config_subranges", ok, why);
    bool oor = true;
    for (auto [off, len] : std::vector<std::pair<uint32_t, uint32_t>>{
             {104, 1}, {103, 2}, {100, 8}, {0xffffffff, 2}}) {
      auto r = d.read_config(off, len);
      if (r) {
        oor = false;
        why = fmt::format("GET_CONFIG({}, {}) answered {} bytes", off, len, r->size());
        break;
      }
    }
    check("ice.config_out_of_range", oor, oor ? "" : why);
  } else {
    failed("ice.config_subranges",
           fmt::format("config space is {} bytes, expected {}", cfg.raw.size(), blk::kConfigSize));
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

}  // namespace iceblk::driver::conformance
