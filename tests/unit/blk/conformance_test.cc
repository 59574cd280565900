// Conformance suite for the virtio-blk + ICE device, run across every backend
// (memory, file sync, file io_uring) x ICE off/on x key mode in-band/out-of-band,
// through the in-process ring harness. Every malformed-request case checks the
// status byte AND that the medium is unchanged.
#include <openssl/evp.h>

#include <algorithm>

#include "blk_fixture.h"
#include "ice/key.h"
#include "ice/key_blob.h"
#include "support/reference_cipher.h"

namespace iceblk::blk::testing {
namespace {

struct Param {
  BackendKind backend;
  bool ice;
  KeyMode mode;
};

std::string param_name(const Param& p) {
  std::string n = backend_name(p.backend);
  if (!p.ice) return n + "_plain";
  return n + (p.mode == KeyMode::kInBand ? "_ice_inband" : "_ice_oob");
}

void PrintTo(const Param& p, std::ostream* os) { *os << param_name(p); }

std::vector<Param> all_params() {
  std::vector<Param> v;
  for (auto b : {BackendKind::kMemory, BackendKind::kFileSync, BackendKind::kFileUring}) {
    v.push_back({b, false, KeyMode::kInBand});
    v.push_back({b, true, KeyMode::kInBand});
    v.push_back({b, true, KeyMode::kOutOfBand});
  }
  return v;
}

// Reference AES-XTS through OpenSSL EVP directly (not through the engine).
using iceblk::test::reference_xts;

ice::KeyBlobWire key_blob(uint8_t alg, uint8_t du_exp, uint8_t key_size, const std::vector<uint8_t>& key) {
  ice::KeyBlobWire b{};
  b.alg = alg;
  b.data_unit_size_exp = du_exp;
  b.key_size = key_size;
  b.key_type = 0;
  b.key_len = static_cast<uint16_t>(key.size());
  std::memcpy(b.key, key.data(), key.size());
  return b;
}

constexpr uint8_t kXts = 0;
constexpr uint8_t kK128 = 1, kK256 = 3;

class Conformance : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    DeviceSetup s;
    s.backend = GetParam().backend;
    s.ice = GetParam().ice;
    s.key_mode = GetParam().mode;
    h_ = std::make_unique<BlkHarness>(s);
    h_->init();
    if (::testing::Test::HasFatalFailure()) return;
  }

  bool ice() const { return GetParam().ice; }
  bool inband() const { return GetParam().ice && GetParam().mode == KeyMode::kInBand; }
  // The slot number the driver puts on the wire for virtual slot `v`.
  uint8_t wire_slot(uint8_t v) const { return inband() ? v : static_cast<uint8_t>(8 + v); }

  // Program virtual slot `v`: through PROGRAM_KEY in-band, through the engine
  // (standing in for the secure world) out of band.
  void program(uint8_t v, uint8_t du_exp, const std::vector<uint8_t>& key) {
    const uint8_t ks = key.size() == 64 ? kK256 : kK128;
    if (inband()) {
      auto c = h_->simple(h_->header(kTypeIceProgramKey, 0, v), as_bytes(key_blob(kXts, du_exp, ks, key)), 0);
      ASSERT_EQ(c.status, kStatusOk);
    } else {
      auto k = ice::Key::create({ice::Algorithm::kAesXts, static_cast<ice::KeySize>(ks), 512u << du_exp}, key);
      ASSERT_TRUE(k) << k.error().to_string();
      ASSERT_TRUE(h_->engine_->program(PhysSlot(8 + v), std::move(*k)));
    }
  }

  // Expect `pieces` to complete with `status` and leave the medium untouched.
  void expect_rejected(const std::vector<Piece>& pieces, uint8_t status, const char* what) {
    SCOPED_TRACE(what);
    auto before = h_->medium();
    auto c = h_->run(pieces);
    EXPECT_EQ(c.status, status);
    EXPECT_EQ(c.used_len, 1u);
    EXPECT_TRUE(h_->medium() == before) << "medium changed";
  }
  void expect_rejected(std::vector<uint8_t> hdr, const std::vector<uint8_t>& out, uint32_t in_len, uint8_t status,
                       const char* what) {
    std::vector<Piece> p{Piece::out(std::move(hdr))};
    if (!out.empty()) p.push_back(Piece::out(out));
    if (in_len > 0) p.push_back(Piece::in(in_len));
    p.push_back(Piece::in(1));
    expect_rejected(p, status, what);
  }

  std::vector<uint8_t> seg(uint64_t sector, uint32_t num, uint32_t flags) {
    DiscardWriteZeroes d{};
    d.sector = sector;
    d.num_sectors = num;
    d.flags = flags;
    return as_bytes(d);
  }

  std::unique_ptr<BlkHarness> h_;
};

TEST_P(Conformance, OfferedFeatures) {
  const uint64_t f = h_->dev_->offered_features();
  for (unsigned b : {kFeatureVersion1, kFeatureIndirectDesc, kFeatureEventIdx, kFeatureSegMax, kFeatureBlkSize,
                     kFeatureTopology, kFeatureFlush, kFeatureConfigWce, kFeatureDiscard, kFeatureWriteZeroes}) {
    EXPECT_TRUE(has_feature(f, b)) << b;
  }
  EXPECT_FALSE(has_feature(f, kFeatureMq));
  EXPECT_FALSE(has_feature(f, kFeatureRo));
  EXPECT_EQ(has_feature(f, kFeatureIce), ice());
  EXPECT_EQ(has_feature(f, kFeatureIceInbandKeys), inband());
  EXPECT_EQ(h_->dev_->header_size(), ice() ? 32u : 16u);
}

TEST_P(Conformance, ConfigSpace) {
  auto full = h_->dev_->config_bytes();
  auto rd = [&](size_t off, auto& out) { std::memcpy(&out, full.data() + off, sizeof out); };
  uint64_t capacity;
  uint32_t seg_max, blk_size;
  uint16_t num_queues, slot_info, cap_num;
  rd(0, capacity);
  rd(12, seg_max);
  rd(20, blk_size);
  rd(34, num_queues);
  rd(96, slot_info);
  rd(98, cap_num);
  EXPECT_EQ(capacity, (2u << 20) / 512);
  EXPECT_EQ(seg_max, 62u);  // queue size - 2
  EXPECT_EQ(blk_size, 512u);
  EXPECT_EQ(num_queues, 1u);
  EXPECT_EQ(full[32], 1);  // writeback
  if (ice()) {
    EXPECT_EQ(slot_info, (4u << 8) | 8u);
    EXPECT_EQ(cap_num, h_->dev_->capabilities().size());
    EXPECT_GT(cap_num, 0u);
  } else {
    EXPECT_EQ(slot_info, 0u);
    EXPECT_EQ(cap_num, 0u);
  }
  // Every in-bounds sub-range reads the same bytes; beyond 104 bytes is an error.
  for (uint32_t off = 0; off <= kConfigSize; off += 7) {
    for (uint32_t len = 0; off + len <= kConfigSize; len += 5) {
      std::vector<uint8_t> buf(len);
      ASSERT_TRUE(h_->dev_->read_config(off, buf)) << off << "+" << len;
      EXPECT_TRUE(std::equal(buf.begin(), buf.end(), full.begin() + off));
    }
  }
  std::vector<uint8_t> two(2);
  EXPECT_FALSE(h_->dev_->read_config(103, two));
  EXPECT_FALSE(h_->dev_->read_config(104, std::span<uint8_t>(two.data(), 1)));
  EXPECT_FALSE(h_->dev_->read_config(UINT32_MAX, std::span<uint8_t>(two.data(), 1)));
  std::vector<uint8_t> big(kConfigSize + 1);
  EXPECT_FALSE(h_->dev_->read_config(0, big));
}

TEST_P(Conformance, ConfigWriteOnlyWriteback) {
  const uint8_t zero = 0, two = 2;
  EXPECT_FALSE(h_->dev_->write_config(0, {&zero, 1}));
  EXPECT_FALSE(h_->dev_->write_config(96, {&zero, 1}));
  EXPECT_FALSE(h_->dev_->write_config(32, {&two, 1}));
  ASSERT_TRUE(h_->dev_->write_config(32, {&zero, 1}));
  EXPECT_FALSE(h_->dev_->writeback());
  uint8_t wb = 9;
  ASSERT_TRUE(h_->dev_->read_config(32, {&wb, 1}));
  EXPECT_EQ(wb, 0);
  // Writethrough writes still land on the medium.
  auto data = random_bytes(4096, 7);
  EXPECT_EQ(h_->write(8, data).status, kStatusOk);
  auto m = h_->medium();
  EXPECT_TRUE(std::equal(data.begin(), data.end(), m.begin() + 4096));
}

TEST_P(Conformance, SetFeaturesRejectsBadCombinations) {
  EXPECT_FALSE(h_->dev_->set_features(feature_bit(kFeatureMq)));
  EXPECT_FALSE(h_->dev_->set_features(feature_bit(40)));
  if (inband()) {
    EXPECT_FALSE(h_->dev_->set_features(feature_bit(kFeatureIceInbandKeys)));
  }
  // The vhost-user transport bit is tolerated.
  EXPECT_TRUE(h_->dev_->set_features(feature_bit(kFeatureVersion1) | feature_bit(kFeatureVhostUserProtocol)));
}

TEST_P(Conformance, ReadWriteRoundTrip) {
  auto data = random_bytes(8192, 1);
  auto w = h_->write(16, data);
  EXPECT_EQ(w.status, kStatusOk);
  EXPECT_EQ(w.used_len, 1u);
  auto m = h_->medium();
  EXPECT_TRUE(std::equal(data.begin(), data.end(), m.begin() + 16 * 512));
  auto r = h_->read(16, 8192);
  EXPECT_EQ(r.status, kStatusOk);
  EXPECT_EQ(r.used_len, 8192u + 1);
  EXPECT_EQ(r.in_data(), data);
  // Last sector of the device.
  auto last = random_bytes(512, 2);
  EXPECT_EQ(h_->write((2u << 20) / 512 - 1, last).status, kStatusOk);
  EXPECT_EQ(h_->read((2u << 20) / 512 - 1, 512).in_data(), last);
  // Zero-length I/O succeeds without touching anything.
  EXPECT_EQ(h_->read(0, 0).status, kStatusOk);
}

TEST_P(Conformance, AnyLayoutHeaderSplitEverywhere) {
  auto data = random_bytes(1024, 3);
  ASSERT_EQ(h_->write(40, data).status, kStatusOk);
  const auto hdr = h_->header(kTypeIn, 40);
  for (size_t split = 1; split < hdr.size(); ++split) {
    SCOPED_TRACE(split);
    // Header in two pieces; data and status share one writable descriptor.
    std::vector<Piece> p{Piece::out({hdr.begin(), hdr.begin() + static_cast<long>(split)}),
                         Piece::out({hdr.begin() + static_cast<long>(split), hdr.end()}), Piece::in(1025)};
    auto c = h_->run(p);
    ASSERT_EQ(c.status, kStatusOk);
    EXPECT_EQ(c.in_data(), data);
  }
  // OUT with header and data in one descriptor, status separate.
  auto data2 = random_bytes(1536, 4);
  auto c = h_->run({Piece::out(concat(h_->header(kTypeOut, 80), data2)), Piece::in(1)});
  ASSERT_EQ(c.status, kStatusOk);
  EXPECT_EQ(h_->read(80, 1536).in_data(), data2);
  // Header split byte by byte.
  std::vector<Piece> bytewise;
  for (uint8_t b : h_->header(kTypeIn, 80)) bytewise.push_back(Piece::out({b}));
  bytewise.push_back(Piece::in(512));
  bytewise.push_back(Piece::in(1025));
  auto c2 = h_->run(bytewise);
  ASSERT_EQ(c2.status, kStatusOk);
  EXPECT_EQ(c2.in_data(), data2);
}

TEST_P(Conformance, IndirectDescriptors) {
  auto data = random_bytes(4096, 5);
  auto w = h_->run({Piece::out(h_->header(kTypeOut, 100)), Piece::out(data), Piece::in(1)}, true);
  ASSERT_EQ(w.status, kStatusOk);
  auto r = h_->run({Piece::out(h_->header(kTypeIn, 100)), Piece::in(4096), Piece::in(1)}, true);
  ASSERT_EQ(r.status, kStatusOk);
  EXPECT_EQ(r.in_data(), data);
}

TEST_P(Conformance, ManyRequestsInFlight) {
  std::vector<BlkHarness::Pending> pend;
  std::vector<std::vector<uint8_t>> bufs;
  for (unsigned i = 0; i < 20; ++i) {
    bufs.push_back(random_bytes(4096, 50 + i));
    pend.push_back(h_->start({Piece::out(h_->header(kTypeOut, i * 8ull)), Piece::out(bufs[i]), Piece::in(1)}));
  }
  for (auto& p : pend) EXPECT_EQ(h_->wait(p).status, kStatusOk);
  auto m = h_->medium();
  for (unsigned i = 0; i < 20; ++i) EXPECT_TRUE(std::equal(bufs[i].begin(), bufs[i].end(), m.begin() + i * 4096)) << i;
  EXPECT_GT(h_->notifications_, 0u);
}

TEST_P(Conformance, DrainFinishesInFlight) {
  std::vector<BlkHarness::Pending> pend;
  for (unsigned i = 0; i < 8; ++i) {
    pend.push_back(h_->start({Piece::out(h_->header(kTypeOut, i * 8ull)), Piece::out(random_bytes(4096, i)),
                              Piece::in(1)}));
  }
  ASSERT_TRUE(h_->proc_->process(h_->ring_->device()));
  h_->proc_->drain(h_->ring_->device());
  EXPECT_EQ(h_->proc_->in_flight(), 0u);
  h_->collect();
  EXPECT_EQ(h_->used_.size(), 8u);
  for (auto& p : pend) {
    for (auto& [a, pc] : p.bufs) {
      if (pc.writable) {
        EXPECT_EQ(h_->ring_->bytes(a, 1)[0], kStatusOk);
      }
    }
  }
}

TEST_P(Conformance, DestroyWithRequestsInFlight) {
  if (ice()) program(0, 0, random_bytes(32, 90));
  for (unsigned i = 0; i < 6; ++i) {
    const bool enc = ice() && (i % 2 == 1);
    h_->start({Piece::out(h_->header(kTypeOut, i * 8ull, wire_slot(0), enc ? 1 : 0, i)),
               Piece::out(random_bytes(4096, i)), Piece::in(1)});
  }
  ASSERT_TRUE(h_->proc_->process(h_->ring_->device()));
  h_->proc_.reset();  // waits for the backend; nothing dangles (ASan/LSan runs check)
  h_->negotiate(h_->dev_->offered_features());
  EXPECT_EQ(h_->read(0, 512).status, kStatusOk);
}

TEST_P(Conformance, FlushAndGetId) {
  EXPECT_EQ(h_->simple(h_->header(kTypeFlush, 0), {}, 0).status, kStatusOk);
  auto id = h_->simple(h_->header(kTypeGetId, 0), {}, 20);
  ASSERT_EQ(id.status, kStatusOk);
  EXPECT_EQ(id.used_len, 21u);
  std::vector<uint8_t> want(20, 0);
  const std::string serial = "iceblk-serial-01";
  std::memcpy(want.data(), serial.data(), serial.size());
  EXPECT_EQ(id.in_data(), want);
  auto short_id = h_->simple(h_->header(kTypeGetId, 0), {}, 6);
  ASSERT_EQ(short_id.status, kStatusOk);
  EXPECT_EQ(short_id.in_data(), std::vector<uint8_t>(want.begin(), want.begin() + 6));
}

TEST_P(Conformance, DiscardAndWriteZeroes) {
  h_->fill_medium(11);
  auto before = h_->medium();
  // WRITE_ZEROES with and without UNMAP, DISCARD; two segments in one request.
  struct Case {
    uint32_t type;
    uint32_t flags;
  };
  uint64_t sector = 8;
  for (auto c : {Case{kTypeWriteZeroes, 0}, Case{kTypeWriteZeroes, kWriteZeroesFlagUnmap}, Case{kTypeDiscard, 0}}) {
    auto segs = concat(seg(sector, 16, c.flags), seg(sector + 64, 8, c.flags));
    auto r = h_->simple(h_->header(c.type, 0), segs, 0);
    ASSERT_EQ(r.status, kStatusOk) << c.type;
    std::fill(before.begin() + sector * 512, before.begin() + (sector + 16) * 512, 0);
    std::fill(before.begin() + (sector + 64) * 512, before.begin() + (sector + 72) * 512, 0);
    EXPECT_TRUE(h_->medium() == before) << c.type;
    sector += 128;
  }
}

TEST_P(Conformance, MalformedRequestsLeaveMediumUnchanged) {
  h_->fill_medium(12);
  const uint64_t cap = (2u << 20) / 512;
  const auto data = random_bytes(1024, 13);
  const auto U = kStatusUnsupp;
  const auto E = kStatusIoErr;
  for (uint32_t t : {2u, 3u, 5u, 27u, 30u, 99u, 0x80000001u}) {
    expect_rejected(h_->header(t, 0), data, 0, U, "unknown type");
  }
  if (!ice()) expect_rejected(h_->header(kTypeGetCryptoCaps, 0), {}, 4096, U, "caps without ICE");
  if (!inband()) {
    expect_rejected(h_->header(kTypeIceProgramKey, 0, wire_slot(0)),
                    as_bytes(key_blob(kXts, 3, kK256, random_bytes(64, 1))), 0, U, "program without bit 23");
    expect_rejected(h_->header(kTypeIceEvictKey, 0, wire_slot(0)), {}, 0, U, "evict without bit 23");
  }
  {
    auto hdr = h_->header(kTypeOut, 0);
    hdr.pop_back();
    expect_rejected({Piece::out(hdr), Piece::in(1)}, E, "short header");
  }
  expect_rejected(h_->header(kTypeOut, cap - 1), data, 0, E, "OUT beyond capacity");
  expect_rejected(h_->header(kTypeOut, cap), random_bytes(512, 1), 0, E, "OUT at capacity");
  expect_rejected(h_->header(kTypeOut, UINT64_MAX), data, 0, E, "OUT sector max");
  expect_rejected(h_->header(kTypeOut, (UINT64_MAX >> 9) + 1), data, 0, E, "OUT sector*512 overflows");
  expect_rejected(h_->header(kTypeOut, 0), random_bytes(500, 1), 0, E, "OUT not multiple of 512");
  expect_rejected(h_->header(kTypeIn, cap - 1), {}, 1024, E, "IN beyond capacity");
  expect_rejected(h_->header(kTypeIn, 0), {}, 700, E, "IN not multiple of 512");
  // DISCARD / WRITE_ZEROES segment checks (limits: 64 sectors, 4 segments).
  expect_rejected(h_->header(kTypeDiscard, 0), seg(0, 8, 2), 0, U, "discard reserved flag");
  expect_rejected(h_->header(kTypeDiscard, 0), seg(0, 8, kWriteZeroesFlagUnmap), 0, U, "discard with unmap");
  expect_rejected(h_->header(kTypeWriteZeroes, 0), seg(0, 8, 0x80000000u), 0, U, "wz reserved flag");
  expect_rejected(h_->header(kTypeWriteZeroes, 0), concat(seg(0, 8, 0), seg(16, 8, 4)), 0, U,
                  "reserved flag in 2nd segment");
  expect_rejected(h_->header(kTypeWriteZeroes, 0), seg(0, 65, 0), 0, E, "wz num_sectors > max");
  expect_rejected(h_->header(kTypeDiscard, 0), seg(0, 65, 0), 0, E, "discard num_sectors > max");
  expect_rejected(h_->header(kTypeWriteZeroes, 0), seg(cap - 4, 8, 0), 0, E, "wz beyond capacity");
  expect_rejected(h_->header(kTypeWriteZeroes, 0), seg(UINT64_MAX - 2, 8, 0), 0, E, "wz sector overflow");
  expect_rejected(h_->header(kTypeWriteZeroes, 0), concat(seg(0, 8, 0), seg(cap, 8, 0)), 0, E,
                  "valid segment then bad one: nothing applied");
  {
    std::vector<uint8_t> five;
    for (int i = 0; i < 5; ++i) five = concat(five, seg(i * 8ull, 8, 0));
    expect_rejected(h_->header(kTypeWriteZeroes, 0), five, 0, E, "too many segments");
  }
  expect_rejected(h_->header(kTypeDiscard, 0), random_bytes(20, 1), 0, E, "segment bytes not multiple of 16");
  expect_rejected({Piece::out(h_->header(kTypeWriteZeroes, 0)), Piece::in(1)}, E, "no segments");
}

TEST_P(Conformance, UnanswerableChainsCompleteWithZeroLength) {
  h_->fill_medium(14);
  auto before = h_->medium();
  // No device-writable descriptor: there is no status byte to write.
  auto c = h_->run({Piece::out(h_->header(kTypeOut, 0)), Piece::out(random_bytes(512, 1))});
  EXPECT_TRUE(c.completed);
  EXPECT_EQ(c.used_len, 0u);
  // Readable after writable: the chain walker rejects it; status untouched.
  auto c2 = h_->run({Piece::out(h_->header(kTypeOut, 0)), Piece::in(1), Piece::out(random_bytes(512, 1))});
  EXPECT_TRUE(c2.completed);
  EXPECT_EQ(c2.used_len, 0u);
  EXPECT_EQ(c2.status, 0xA5);
  EXPECT_TRUE(h_->medium() == before);
  // The queue keeps working afterwards.
  EXPECT_EQ(h_->read(0, 512).status, kStatusOk);
}

TEST_P(Conformance, DeviceWithoutIceNegotiatedIsPlain) {
  if (!ice()) GTEST_SKIP() << "ICE device only";
  h_->negotiate(h_->dev_->offered_features() & ~feature_bit(kFeatureIce) & ~feature_bit(kFeatureIceInbandKeys));
  EXPECT_EQ(h_->dev_->header_size(), 16u);
  EXPECT_EQ(h_->simple(h_->header(kTypeGetCryptoCaps, 0), {}, 4096).status, kStatusUnsupp);
  auto data = random_bytes(512, 9);
  EXPECT_EQ(h_->write(0, data).status, kStatusOk);
  EXPECT_EQ(h_->read(0, 512).in_data(), data);
}

// --- ICE ----------------------------------------------------------------------

TEST_P(Conformance, CryptoCapabilities) {
  if (!ice()) GTEST_SKIP() << "ICE only";
  const auto& caps = h_->dev_->capabilities();
  const uint32_t need = static_cast<uint32_t>(caps.size() * 4);
  auto c = h_->simple(h_->header(kTypeGetCryptoCaps, 0), {}, need + 8);
  ASSERT_EQ(c.status, kStatusOk);
  auto d = c.in_data();
  bool xts256_4k = false;
  for (size_t i = 0; i < caps.size(); ++i) {
    EXPECT_EQ(d[i * 4], static_cast<uint8_t>(caps[i].alg));
    EXPECT_EQ(d[i * 4 + 1], caps[i].data_unit_size_exp);
    EXPECT_EQ(d[i * 4 + 2], static_cast<uint8_t>(caps[i].key_size));
    EXPECT_EQ(d[i * 4 + 3], 0);
    xts256_4k |= d[i * 4] == 0 && d[i * 4 + 1] == 3 && d[i * 4 + 2] == 3;
  }
  EXPECT_TRUE(xts256_4k);
  EXPECT_EQ(d[need], 0xA5) << "device wrote past capability_num entries";
  auto s = h_->simple(h_->header(kTypeGetCryptoCaps, 0), {}, need - 1);
  EXPECT_EQ(s.status, kStatusIoErr);
}

TEST_P(Conformance, CiphertextOnMediumIsXtsOfPlaintext) {
  if (!ice()) GTEST_SKIP() << "ICE only";
  const auto key = random_bytes(64, 21);
  program(1, 3, key);  // AES-256-XTS, 4096-byte data units
  const auto plain = random_bytes(16384, 22);
  const uint64_t dun = 1000, sector = 64;
  auto w = h_->write(sector, plain, wire_slot(1), 1, dun);
  ASSERT_EQ(w.status, kStatusOk);
  EXPECT_EQ(w.out_bufs[1], plain) << "device modified the driver's buffer";
  auto m = h_->medium();
  std::vector<uint8_t> stored(m.begin() + sector * 512, m.begin() + sector * 512 + plain.size());
  EXPECT_EQ(stored, reference_xts(key, dun, plain, 4096, true));
  EXPECT_TRUE(std::search(m.begin(), m.end(), plain.begin(), plain.begin() + 64) == m.end())
      << "plaintext reached the medium";
  // Encrypted read decrypts; plain read returns the ciphertext.
  auto r = h_->read(sector, 16384, wire_slot(1), 1, dun);
  ASSERT_EQ(r.status, kStatusOk);
  EXPECT_EQ(r.in_data(), plain);
  EXPECT_EQ(h_->read(sector, 16384).in_data(), stored);
  // A partial encrypted read at a later data unit uses DUN + i.
  auto part = h_->read(sector + 8, 4096, wire_slot(1), 1, dun + 1);
  ASSERT_EQ(part.status, kStatusOk);
  EXPECT_EQ(part.in_data(), std::vector<uint8_t>(plain.begin() + 4096, plain.begin() + 8192));
}

TEST_P(Conformance, LargeEncryptedRequestSpansChunks) {
  if (!ice()) GTEST_SKIP() << "ICE only";
  const auto key = random_bytes(32, 23);
  program(0, 0, key);  // AES-128-XTS, 512-byte data units
  const auto plain = random_bytes(600 * 1024, 24);  // > 2 bounce chunks
  ASSERT_EQ(h_->write(0, plain, wire_slot(0), 1, 7).status, kStatusOk);
  auto m = h_->medium();
  EXPECT_TRUE(std::equal(m.begin(), m.begin() + plain.size(), reference_xts(key, 7, plain, 512, true).begin()));
  auto r = h_->read(0, static_cast<uint32_t>(plain.size()), wire_slot(0), 1, 7);
  ASSERT_EQ(r.status, kStatusOk);
  EXPECT_EQ(r.in_data(), plain);
}

TEST_P(Conformance, EncryptedRequestErrors) {
  if (!ice()) GTEST_SKIP() << "ICE only";
  h_->fill_medium(31);
  program(0, 3, random_bytes(64, 32));  // 4096-byte data units
  const auto d4k = random_bytes(4096, 33);
  const auto U = kStatusUnsupp;
  const auto E = kStatusIoErr;
  const uint8_t s0 = wire_slot(0);
  for (uint32_t t : {kTypeOut, kTypeIn}) {
    const auto& out = t == kTypeOut ? d4k : std::vector<uint8_t>{};
    const uint32_t in = t == kTypeIn ? 4096 : 0;
    expect_rejected(h_->header(t, 8, s0, 2), out, in, U, "activate 2");
    expect_rejected(h_->header(t, 8, s0, 0xFF), out, in, U, "activate 255");
    expect_rejected(h_->header(t, 8, s0, 0, 0, 1), out, in, U, "reserved1 (plain)");
    expect_rejected(h_->header(t, 8, s0, 1, 0, 0, 1), out, in, U, "reserved2");
    expect_rejected(h_->header(t, 8, wire_slot(1), 1), out, in, E, "empty slot");
    expect_rejected(h_->header(t, 8, wire_slot(4), 1), out, in, E, "slot past max_slots");
    expect_rejected(h_->header(t, 8, 7, 1), out, in, E, "neighbour's physical slot");
    expect_rejected(h_->header(t, 8, 255, 1), out, in, E, "slot 255");
    expect_rejected(h_->header(t, 1, s0, 1), out, in, E, "sector not aligned to data unit");
    expect_rejected(h_->header(t, 8, s0, 1, UINT64_MAX - 0), t == kTypeOut ? concat(d4k, d4k) : std::vector<uint8_t>{},
                    t == kTypeIn ? 8192 : 0, E, "DUN overflow");
    expect_rejected(h_->header(t, (2u << 20) / 512 - 8, s0, 1), t == kTypeOut ? concat(d4k, d4k) : std::vector<uint8_t>{},
                    t == kTypeIn ? 8192 : 0, E, "beyond capacity");
  }
  expect_rejected(h_->header(kTypeOut, 8, s0, 1), random_bytes(512, 1), 0, E, "length not multiple of data unit");
  if (inband()) {
    // In-band slots are virtual: the VM's physical slot numbers are not valid.
    expect_rejected(h_->header(kTypeOut, 8, 8, 1), d4k, 0, E, "physical slot number in-band");
  }
  // The last DUN exactly: fine.
  EXPECT_EQ(h_->write(8, d4k, s0, 1, UINT64_MAX).status, kStatusOk);
}

TEST_P(Conformance, InFlightRequestKeepsItsKey) {
  if (!ice()) GTEST_SKIP() << "ICE only";
  const auto key = random_bytes(64, 41);
  program(2, 3, key);
  const auto plain = random_bytes(8192, 42);
  ASSERT_EQ(h_->write(16, plain, wire_slot(2), 1, 5).status, kStatusOk);
  // Start an encrypted read, let the processor look the key up, then evict the
  // slot before the backend completes (io_uring) or right after (sync).
  auto p = h_->start({Piece::out(h_->header(kTypeIn, 16, wire_slot(2), 1, 5)), Piece::in(8192), Piece::in(1)});
  ASSERT_TRUE(h_->proc_->process(h_->ring_->device()));
  ASSERT_TRUE(h_->engine_->evict(PhysSlot(8 + 2)));
  auto c = h_->wait(p);
  ASSERT_EQ(c.status, kStatusOk);
  EXPECT_EQ(c.in_data(), plain);
  EXPECT_EQ(h_->read(16, 8192, wire_slot(2), 1, 5).status, kStatusIoErr);
}

TEST_P(Conformance, ProgramKeyBlobRules) {
  if (!inband()) GTEST_SKIP() << "in-band key mode only";
  h_->fill_medium(51);
  const auto key = random_bytes(64, 52);
  const auto hdr = h_->header(kTypeIceProgramKey, 0, 0);
  const auto good = key_blob(kXts, 3, kK256, key);
  const auto U = kStatusUnsupp;
  const auto E = kStatusIoErr;
  auto slot_empty = [&] { return !h_->engine_->lookup(PhysSlot(8)).has_value(); };

  auto blob = as_bytes(good);
  expect_rejected(hdr, {blob.begin(), blob.end() - 1}, 0, E, "135 bytes");
  expect_rejected(hdr, concat(blob, {0}), 0, E, "137 bytes");
  expect_rejected(h_->header(kTypeIceProgramKey, 0, 4), blob, 0, E, "slot >= max_slots");
  auto b = good;
  b.alg = 1;
  expect_rejected(hdr, as_bytes(b), 0, U, "BitLocker alg not advertised");
  b = good;
  b.data_unit_size_exp = 8;
  expect_rejected(hdr, as_bytes(b), 0, U, "data unit exp 8");
  b = good;
  b.key_size = 2;
  expect_rejected(hdr, as_bytes(b), 0, U, "192-bit XTS not advertised");
  b = good;
  b.key_type = 1;
  expect_rejected(hdr, as_bytes(b), 0, U, "wrapped key");
  b = good;
  b.key_len = 63;
  expect_rejected(hdr, as_bytes(b), 0, E, "key_len");
  b = good;
  b.reserved = 1;
  expect_rejected(hdr, as_bytes(b), 0, E, "reserved");
  b = good;
  b.key[100] = 1;
  expect_rejected(hdr, as_bytes(b), 0, E, "non-zero tail");
  b = good;
  std::memcpy(b.key + 32, b.key, 32);
  expect_rejected(hdr, as_bytes(b), 0, E, "equal XTS halves");
  EXPECT_TRUE(slot_empty());

  auto ok = h_->simple(hdr, blob, 0);
  ASSERT_EQ(ok.status, kStatusOk);
  EXPECT_FALSE(slot_empty());
  EXPECT_TRUE(h_->engine_->lookup(PhysSlot(8)).value()->key.material().size() == 64);
  // A failed reprogram leaves the old key in place.
  b = good;
  b.reserved = 1;
  expect_rejected(hdr, as_bytes(b), 0, E, "reserved on reprogram");
  auto plain = random_bytes(4096, 53);
  ASSERT_EQ(h_->write(0, plain, 0, 1, 9).status, kStatusOk);
  auto m = h_->medium();
  EXPECT_TRUE(std::equal(m.begin(), m.begin() + 4096, reference_xts(key, 9, plain, 4096, true).begin()));
}

TEST_P(Conformance, EvictKey) {
  if (!inband()) GTEST_SKIP() << "in-band key mode only";
  program(3, 3, random_bytes(64, 61));
  EXPECT_EQ(h_->write(0, random_bytes(4096, 62), 3, 1).status, kStatusOk);
  EXPECT_EQ(h_->simple(h_->header(kTypeIceEvictKey, 0, 3), {}, 0).status, kStatusOk);
  EXPECT_FALSE(h_->engine_->lookup(PhysSlot(11)).has_value());
  EXPECT_EQ(h_->write(0, random_bytes(4096, 62), 3, 1).status, kStatusIoErr);
  EXPECT_EQ(h_->simple(h_->header(kTypeIceEvictKey, 0, 3), {}, 0).status, kStatusOk) << "empty slot";
  EXPECT_EQ(h_->simple(h_->header(kTypeIceEvictKey, 0, 4), {}, 0).status, kStatusIoErr);
}

TEST_P(Conformance, ResetEvictsInbandKeysOnly) {
  if (!ice()) GTEST_SKIP() << "ICE only";
  program(0, 3, random_bytes(64, 71));
  // A key in the neighbour VM's range must survive our reset.
  auto other = ice::Key::create({ice::Algorithm::kAesXts, ice::KeySize::k256, 4096}, random_bytes(64, 72));
  ASSERT_TRUE(other);
  ASSERT_TRUE(h_->engine_->program(PhysSlot(3), std::move(*other)));
  h_->dev_->reset();
  EXPECT_EQ(h_->dev_->negotiated_features(), 0u);
  EXPECT_TRUE(h_->engine_->lookup(PhysSlot(3)).has_value());
  EXPECT_EQ(h_->engine_->lookup(PhysSlot(8)).has_value(), !inband());
  h_->negotiate(h_->dev_->offered_features());
  EXPECT_EQ(h_->write(0, random_bytes(4096, 73), wire_slot(0), 1).status, inband() ? kStatusIoErr : kStatusOk);
}

// Proposed config field key_generation (docs/protocol.md §2): at offset 100, read-only,
// changed by a reset exactly when the reset lost keys (in-band); 0 without ICE.
TEST_P(Conformance, KeyGenerationChangesWhenKeysAreLost) {
  auto gen = [&] {
    std::array<uint8_t, 4> b{};
    EXPECT_TRUE(h_->dev_->read_config(kConfigKeyGenerationOffset, b));
    return load_obj<uint32_t>(b.data());
  };
  if (!ice()) {
    EXPECT_EQ(gen(), 0u);
    return;
  }
  const uint32_t before = gen();
  EXPECT_EQ(before, h_->dev_->key_generation());
  EXPECT_FALSE(
      h_->dev_->write_config(kConfigKeyGenerationOffset, std::array<uint8_t, 4>{1, 2, 3, 4}));
  EXPECT_EQ(gen(), before) << "read-only";
  program(0, 3, random_bytes(64, 91));
  EXPECT_EQ(gen(), before) << "programming keys does not lose any";
  h_->dev_->reset();
  if (inband()) {
    EXPECT_NE(gen(), before) << "in-band keys died with the reset";
  } else {
    EXPECT_EQ(gen(), before) << "out-of-band keys survive a reset";
  }
}

TEST_P(Conformance, OutOfBandDeviceHasNoKeyPath) {
  if (!ice() || inband()) GTEST_SKIP() << "out-of-band only";
  h_->fill_medium(81);
  expect_rejected(h_->header(kTypeIceProgramKey, 0, 8), as_bytes(key_blob(kXts, 3, kK256, random_bytes(64, 82))), 0,
                  kStatusUnsupp, "program");
  EXPECT_FALSE(h_->engine_->lookup(PhysSlot(8)).has_value());
  program(0, 3, random_bytes(64, 83));
  EXPECT_EQ(h_->simple(h_->header(kTypeIceEvictKey, 0, 8), {}, 0).status, kStatusUnsupp);
  EXPECT_TRUE(h_->engine_->lookup(PhysSlot(8)).has_value());
}

INSTANTIATE_TEST_SUITE_P(All, Conformance, ::testing::ValuesIn(all_params()),
                         [](const auto& p) { return param_name(p.param); });

// --- notification modes ----------------------------------------------------------

TEST(Notifications, WithoutEventIdxAndIndirect) {
  DeviceSetup s;
  s.ice = true;
  BlkHarness h(s);
  h.init();
  h.negotiate(feature_bit(kFeatureVersion1) | feature_bit(kFeatureFlush) | feature_bit(kFeatureIce) |
              feature_bit(kFeatureIceInbandKeys));
  auto data = random_bytes(2048, 3);
  EXPECT_EQ(h.write(4, data).status, kStatusOk);
  EXPECT_EQ(h.read(4, 2048).in_data(), data);
  // Without EVENT_IDX and with interrupts enabled, every completion notifies.
  EXPECT_EQ(h.notifications_, 2u);
  // DISCARD was not negotiated: UNSUPP even though the device offers it.
  EXPECT_EQ(h.simple(h.header(kTypeDiscard, 0), as_bytes(DiscardWriteZeroes{le64(0), le32(8), le32(0)}), 0).status,
            kStatusUnsupp);
}

// --- read-only device ------------------------------------------------------------

class ReadOnly : public ::testing::TestWithParam<BackendKind> {};

TEST_P(ReadOnly, WritesFailAndMediumIsUnchanged) {
  DeviceSetup s;
  s.backend = GetParam();
  s.read_only = true;
  s.ice = true;
  BlkHarness h(s);
  h.init();
  const uint64_t f = h.dev_->offered_features();
  EXPECT_TRUE(has_feature(f, kFeatureRo));
  EXPECT_FALSE(has_feature(f, kFeatureDiscard));
  EXPECT_FALSE(has_feature(f, kFeatureWriteZeroes));
  auto before = h.medium();
  EXPECT_EQ(h.write(0, random_bytes(4096, 1)).status, kStatusIoErr);
  EXPECT_EQ(h.simple(h.header(kTypeWriteZeroes, 0), as_bytes(DiscardWriteZeroes{le64(0), le32(8), le32(0)}), 0).status,
            kStatusUnsupp);
  EXPECT_TRUE(h.medium() == before);
  EXPECT_EQ(h.read(0, 4096).status, kStatusOk);
  EXPECT_EQ(h.simple(h.header(kTypeFlush, 0), {}, 0).status, kStatusOk);
}

INSTANTIATE_TEST_SUITE_P(All, ReadOnly,
                         ::testing::Values(BackendKind::kMemory, BackendKind::kFileSync, BackendKind::kFileUring),
                         [](const auto& p) { return backend_name(p.param); });

}  // namespace
}  // namespace iceblk::blk::testing
