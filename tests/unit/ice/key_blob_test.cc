// parse_key_blob / encode_key_blob: the spec §6 rules shared by SET_KEY and the
// in-band PROGRAM_KEY.
#include "ice/key_blob.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <numeric>

namespace iceblk::ice {
namespace {

std::vector<Capability> test_caps() {
  return capabilities_for({{Algorithm::kAesXts, KeySize::k256},
                                {Algorithm::kAesXts, KeySize::k128},
                                {Algorithm::kEssivAesCbc, KeySize::k128}},
                               /*allow_ecb=*/false);
}

// A blob built byte by byte (independently of encode_key_blob).
std::array<uint8_t, kKeyBlobSize> raw_blob(uint8_t alg, uint8_t du_exp, uint8_t key_size,
                                           uint16_t key_len, uint8_t first_key_byte = 1) {
  std::array<uint8_t, kKeyBlobSize> b{};
  b[0] = alg;
  b[1] = du_exp;
  b[2] = key_size;
  b[3] = 0;
  b[4] = static_cast<uint8_t>(key_len & 0xff);
  b[5] = static_cast<uint8_t>(key_len >> 8);
  for (size_t i = 0; i < key_len && i < kKeyBlobKeyBytes; ++i) {
    b[8 + i] = static_cast<uint8_t>(first_key_byte + i);
  }
  return b;
}

TEST(KeyBlob, ParsesAes256Xts) {
  auto b = raw_blob(0, 3, 3, 64);
  auto key = parse_key_blob(b, test_caps());
  ASSERT_TRUE(key) << key.error().to_string();
  EXPECT_EQ(key->mode(), (CryptoMode{Algorithm::kAesXts, KeySize::k256, 4096}));
  ASSERT_EQ(key->material().size(), 64u);
  EXPECT_EQ(0, std::memcmp(key->material().data(), b.data() + 8, 64));
}

TEST(KeyBlob, ParsesAes128XtsAndEssiv) {
  auto x = parse_key_blob(raw_blob(0, 0, 1, 32), test_caps());
  ASSERT_TRUE(x) << x.error().to_string();
  EXPECT_EQ(x->mode(), (CryptoMode{Algorithm::kAesXts, KeySize::k128, 512}));
  auto e = parse_key_blob(raw_blob(3, 7, 1, 16), test_caps());
  ASSERT_TRUE(e) << e.error().to_string();
  EXPECT_EQ(e->mode(), (CryptoMode{Algorithm::kEssivAesCbc, KeySize::k128, 65536}));
  EXPECT_EQ(e->material().size(), 16u);
}

TEST(KeyBlob, UnadvertisedTripleIsUnsupported) {
  struct Case {
    uint8_t alg, exp, ks;
    uint16_t len;
  };
  const Case cases[] = {
      {1, 3, 3, 64},     // BitLocker AES-CBC: never advertised
      {2, 3, 3, 32},     // ECB: not advertised without the host opt-in
      {0, 8, 3, 64},     // data unit 128 KiB
      {0, 3, 2, 48},     // XTS-192
      {0, 3, 0, 64},     // key size INVALID
      {3, 3, 3, 32},     // ESSIV-256
      {0xff, 0, 1, 16},  // unknown algorithm
  };
  for (const auto& c : cases) {
    auto r = parse_key_blob(raw_blob(c.alg, c.exp, c.ks, c.len), test_caps());
    ASSERT_FALSE(r) << int(c.alg) << "/" << int(c.exp) << "/" << int(c.ks);
    EXPECT_EQ(r.error().code, Errc::kUnsupported) << r.error().to_string();
  }
}

TEST(KeyBlob, EcbAcceptedWhenAdvertised) {
  auto caps = capabilities_for({{Algorithm::kAesEcb, KeySize::k256}}, /*allow_ecb=*/true);
  auto r = parse_key_blob(raw_blob(2, 0, 3, 32), caps);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->mode().alg, Algorithm::kAesEcb);
}

TEST(KeyBlob, NonRawKeyTypeIsUnsupported) {
  auto b = raw_blob(0, 3, 3, 64);
  b[3] = 1;  // hardware-wrapped: reserved
  auto r = parse_key_blob(b, test_caps());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kUnsupported);
}

TEST(KeyBlob, NonZeroReservedIsInvalid) {
  for (size_t off : {6u, 7u}) {
    auto b = raw_blob(0, 3, 3, 64);
    b[off] = 0x80;
    auto r = parse_key_blob(b, test_caps());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  }
}

TEST(KeyBlob, WrongKeyLenIsInvalid) {
  for (int len : {0, 16, 32, 63, 65, 128, 129, 0xffff}) {
    auto b = raw_blob(0, 3, 3, static_cast<uint16_t>(len));
    auto r = parse_key_blob(b, test_caps());
    ASSERT_FALSE(r) << len;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument) << len;
  }
}

TEST(KeyBlob, NonZeroTailIsInvalid) {
  auto b = raw_blob(3, 3, 1, 16);  // ESSIV: 16 bytes used
  b[8 + 16] = 1;
  auto r = parse_key_blob(b, test_caps());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  b[8 + 16] = 0;
  b[kKeyBlobSize - 1] = 1;
  EXPECT_FALSE(parse_key_blob(b, test_caps()));
}

TEST(KeyBlob, EqualXtsHalvesAreInvalid) {
  auto b = raw_blob(0, 3, 3, 64);
  std::memcpy(b.data() + 8 + 32, b.data() + 8, 32);
  auto r = parse_key_blob(b, test_caps());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  // Halves differing in one bit are fine.
  b[8 + 63] ^= 1;
  EXPECT_TRUE(parse_key_blob(b, test_caps()));
}

TEST(KeyBlob, ErrorMessagesCarryNoKeyBytes) {
  // A key of recognisable bytes, rejected for each reason; the message must not
  // contain them in any usual rendering.
  auto check = [](const std::array<uint8_t, kKeyBlobSize>& b) {
    auto r = parse_key_blob(b, test_caps());
    ASSERT_FALSE(r);
    const std::string& m = r.error().message;
    std::string hex;
    for (size_t i = 0; i < 8; ++i) hex += fmt::format("{:02x}", b[8 + i]);
    EXPECT_EQ(m.find(hex), std::string::npos) << m;
    EXPECT_EQ(m.find(std::string(reinterpret_cast<const char*>(b.data() + 8), 8)),
              std::string::npos);
  };
  auto b = raw_blob(0, 3, 3, 64, 0xa0);
  b[6] = 1;
  check(b);
  b = raw_blob(0, 3, 3, 64, 0xa0);
  std::memcpy(b.data() + 8 + 32, b.data() + 8, 32);
  check(b);
  check(raw_blob(0, 3, 3, 63, 0xa0));
}

TEST(KeyBlob, EncodeRoundTrips) {
  std::array<uint8_t, 64> key{};
  std::iota(key.begin(), key.end(), uint8_t{0x40});
  std::array<uint8_t, kKeyBlobSize> blob;
  blob.fill(0xee);  // must be fully overwritten
  const CryptoMode mode{Algorithm::kAesXts, KeySize::k256, 1024};
  ASSERT_TRUE(encode_key_blob(mode, key, blob));
  EXPECT_EQ(blob[0], 0);
  EXPECT_EQ(blob[1], 1);
  EXPECT_EQ(blob[2], 3);
  EXPECT_EQ(blob[3], 0);
  EXPECT_EQ(blob[4], 64);
  EXPECT_EQ(blob[5], 0);
  EXPECT_EQ(blob[6], 0);
  EXPECT_EQ(blob[7], 0);
  for (size_t i = 8 + 64; i < kKeyBlobSize; ++i) ASSERT_EQ(blob[i], 0) << i;
  auto parsed = parse_key_blob(blob, test_caps());
  ASSERT_TRUE(parsed) << parsed.error().to_string();
  EXPECT_EQ(parsed->mode(), mode);
  EXPECT_TRUE(std::equal(key.begin(), key.end(), parsed->material().begin()));
}

TEST(KeyBlob, EncodeRejectsBadModeOrLength) {
  std::array<uint8_t, kKeyBlobSize> blob{};
  std::array<uint8_t, 64> key{};
  key[0] = 1;
  EXPECT_EQ(encode_key_blob({Algorithm::kAesXts, KeySize::k256, 4096},
                            std::span(key).first(32), blob)
                .error()
                .code,
            Errc::kInvalidArgument);
  EXPECT_EQ(encode_key_blob({Algorithm::kAesXts, KeySize::k256, 1000}, key, blob).error().code,
            Errc::kUnsupported);
  EXPECT_EQ(encode_key_blob({Algorithm::kBitlockerAesCbc, KeySize::k256, 4096}, key, blob)
                .error()
                .code,
            Errc::kUnsupported);
}

}  // namespace
}  // namespace iceblk::ice
