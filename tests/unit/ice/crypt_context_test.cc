// Known answers, independent recomputation with raw OpenSSL, round trips and the
// error paths of CryptContext::crypt.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <array>
#include <cstring>
#include <random>

#include "ice/engine.h"
#include "ice_test_util.h"

namespace iceblk::ice {
namespace {

using test::counting;
using test::from_hex;
using test::make_key;
using test::pattern;
using test::to_hex;

constexpr uint64_t kMaxDun = ~uint64_t{0};

// IEEE 1619-2007 vector 10: XTS-AES-256, 512-byte data unit, DUN 0xff.
constexpr std::string_view kV10Key =
    "2718281828459045235360287471352662497757247093699959574966967627"
    "3141592653589793238462643383279502884197169399375105820974944592";
constexpr std::string_view kV10Ct =
    "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
    "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd"
    "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
    "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca"
    "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0"
    "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
    "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec"
    "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a"
    "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
    "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae"
    "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29"
    "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
    "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f"
    "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385"
    "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
    "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

// IEEE 1619-2007 vector 4: XTS-AES-128, 512-byte data unit, DUN 0.
constexpr std::string_view kV4Key =
    "2718281828459045235360287471352631415926535897932384626433832795";
constexpr std::string_view kV4Ct =
    "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c"
    "c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412"
    "328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce"
    "93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265"
    "5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8"
    "a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f434"
    "1332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c"
    "5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e"
    "94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc"
    "1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3"
    "e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344"
    "b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd"
    "74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752"
    "afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e"
    "bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18d"
    "eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568";

ProgrammedKey programmed(const CryptoMode& m, std::span<const uint8_t> material) {
  return ProgrammedKey(make_key(m, material), 1);
}

std::array<uint8_t, 16> le_iv(uint64_t dun) {
  std::array<uint8_t, 16> iv{};
  for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(dun >> (8 * i));
  return iv;
}

// One-shot raw EVP (no engine code): a fresh context per call.
std::vector<uint8_t> raw_evp(const char* name, std::span<const uint8_t> key, const uint8_t* iv,
                             std::span<const uint8_t> in, bool enc = true) {
  EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, name, nullptr);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  std::vector<uint8_t> out(in.size());
  int l = 0;
  EXPECT_EQ(EVP_CipherInit_ex2(ctx, c, key.data(), iv, enc ? 1 : 0, nullptr), 1);
  EVP_CIPHER_CTX_set_padding(ctx, 0);
  EXPECT_EQ(EVP_CipherUpdate(ctx, out.data(), &l, in.data(), static_cast<int>(in.size())), 1);
  EXPECT_EQ(static_cast<size_t>(l), in.size());
  EVP_CIPHER_CTX_free(ctx);
  EVP_CIPHER_free(c);
  return out;
}

TEST(CryptKnownAnswer, Ieee1619Vector10Aes256Xts) {
  const auto key = from_hex(kV10Key);
  auto pk = programmed({Algorithm::kAesXts, KeySize::k256, 512}, key);
  auto buf = counting(512);
  CryptContext ctx;
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(0xff), buf));
  EXPECT_EQ(to_hex(std::span(buf).first(16)), "1c3b3a102f770386e4836c99e370cf9b");
  EXPECT_EQ(to_hex(buf), kV10Ct);
  ASSERT_TRUE(ctx.crypt(pk, Direction::kDecrypt, Dun(0xff), buf));
  EXPECT_EQ(buf, counting(512));
}

TEST(CryptKnownAnswer, Ieee1619Vector4Aes128Xts) {
  const auto key = from_hex(kV4Key);
  auto pk = programmed({Algorithm::kAesXts, KeySize::k128, 512}, key);
  auto buf = counting(512);
  CryptContext ctx;
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(0), buf));
  EXPECT_EQ(to_hex(buf), kV4Ct);
  ASSERT_TRUE(ctx.crypt(pk, Direction::kDecrypt, Dun(0), buf));
  EXPECT_EQ(buf, counting(512));
}

TEST(CryptKnownAnswer, Vector4AsSecondUnitOfATwoUnitBuffer) {
  // Two units from DUN 0: the first is vector 4, the second a single-unit call at DUN 1.
  const auto key = from_hex(kV4Key);
  auto pk = programmed({Algorithm::kAesXts, KeySize::k128, 512}, key);
  auto two = counting(512);
  two.insert(two.end(), two.begin(), two.end());
  CryptContext ctx;
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(0), two));
  EXPECT_EQ(to_hex(std::span(two).first(512)), kV4Ct);
  auto unit1 = counting(512);
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(1), unit1));
  EXPECT_EQ(to_hex(std::span(two).subspan(512)), to_hex(unit1));
}

TEST(CryptIndependent, XtsTweakIsLittleEndian128BitDun) {
  const auto key = pattern(64, 11);
  auto pk = programmed({Algorithm::kAesXts, KeySize::k256, 4096}, key);
  CryptContext ctx;
  for (uint64_t dun : {uint64_t{0}, uint64_t{0x0123456789abcdefULL}, kMaxDun}) {
    const auto pt = pattern(4096, 12);
    auto buf = pt;
    ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(dun), buf));
    const auto iv = le_iv(dun);
    EXPECT_EQ(to_hex(buf), to_hex(raw_evp("AES-256-XTS", key, iv.data(), pt))) << dun;
  }
}

TEST(CryptIndependent, EssivMatchesSha256EcbIvAndCbc) {
  const auto key = pattern(16, 21);
  constexpr uint32_t kDus = 1024;
  auto pk = programmed({Algorithm::kEssivAesCbc, KeySize::k128, kDus}, key);
  uint8_t salt[32];
  unsigned salt_len = 0;
  ASSERT_EQ(EVP_Digest(key.data(), key.size(), salt, &salt_len, EVP_sha256(), nullptr), 1);
  ASSERT_EQ(salt_len, 32u);
  CryptContext ctx;
  for (uint64_t first : {uint64_t{0}, uint64_t{0x0102030405060708ULL}, kMaxDun - 1}) {
    const auto pt = pattern(2 * kDus, 22);
    auto buf = pt;
    ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(first), buf));
    for (uint64_t i = 0; i < 2; ++i) {
      const auto dun_block = le_iv(first + i);
      const auto iv =
          raw_evp("AES-256-ECB", std::span<const uint8_t>(salt, 32), nullptr, dun_block);
      const auto expect =
          raw_evp("AES-128-CBC", key, iv.data(), std::span(pt).subspan(i * kDus, kDus));
      EXPECT_EQ(to_hex(std::span(buf).subspan(i * kDus, kDus)), to_hex(expect))
          << "first " << first << " unit " << i;
    }
    ASSERT_TRUE(ctx.crypt(pk, Direction::kDecrypt, Dun(first), buf));
    EXPECT_EQ(buf, pt);
  }
}

TEST(CryptIndependent, EcbMatchesRawAndIgnoresDun) {
  const auto key = pattern(32, 31);
  auto pk = programmed({Algorithm::kAesEcb, KeySize::k256, 512}, key);
  const auto pt = pattern(1024, 32);
  auto a = pt;
  auto b = pt;
  CryptContext ctx;
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(0), a));
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(12345), b));
  EXPECT_EQ(a, b);
  EXPECT_EQ(to_hex(a), to_hex(raw_evp("AES-256-ECB", key, nullptr, pt)));
}

struct RoundTripCase {
  CryptoMode mode;
  uint64_t first;
};

class CryptRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(CryptRoundTrip, EncryptDecryptAndUnitIndependence) {
  const CryptoMode m = GetParam().mode;
  const uint64_t first = GetParam().first;
  const size_t dus = m.data_unit_size;
  auto pk = ProgrammedKey(make_key(m, uint8_t{41}), 7);
  CryptContext ctx;
  // Two identical plaintext units: with a DUN-dependent IV their ciphertexts differ.
  auto unit = pattern(dus, 42);
  std::vector<uint8_t> pt = unit;
  pt.insert(pt.end(), unit.begin(), unit.end());
  auto buf = pt;
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(first), buf));
  EXPECT_NE(buf, pt);
  const bool same_units = std::equal(buf.begin(), buf.begin() + dus, buf.begin() + dus);
  if (m.alg == Algorithm::kAesEcb) {
    EXPECT_TRUE(same_units) << "ECB ignores the DUN";
  } else {
    EXPECT_FALSE(same_units) << "unit ciphertexts must differ";
  }
  // Multi-unit buffer == unit-by-unit.
  for (size_t i = 0; i < 2; ++i) {
    auto one = unit;
    ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(first + i), one));
    EXPECT_TRUE(std::equal(one.begin(), one.end(), buf.begin() + i * dus)) << "unit " << i;
  }
  ASSERT_TRUE(ctx.crypt(pk, Direction::kDecrypt, Dun(first), buf));
  EXPECT_EQ(buf, pt);
}

std::vector<RoundTripCase> round_trip_cases() {
  std::vector<RoundTripCase> cases;
  for (uint32_t dus = kMinDataUnitSize; dus <= kMaxDataUnitSize; dus *= 2) {
    for (const CryptoMode& m : test::all_modes(dus)) {
      for (uint64_t first : {uint64_t{0}, uint64_t{1}, uint64_t{1} << 32, kMaxDun - 1}) {
        cases.push_back({m, first});
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllModesSizesDuns, CryptRoundTrip, ::testing::ValuesIn(round_trip_cases()),
                         [](const ::testing::TestParamInfo<RoundTripCase>& p) {
                           std::string n = algorithm_name(p.param.mode.alg, p.param.mode.key_size);
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n + "_" + std::to_string(p.param.mode.data_unit_size) + "_dun" +
                                  std::to_string(p.index % 4);
                         });

TEST(CryptErrors, MisalignedLengthsAreRejectedAndBufferUntouched) {
  auto pk = ProgrammedKey(make_key({Algorithm::kAesXts, KeySize::k256, 4096}, uint8_t{1}), 1);
  CryptContext ctx;
  for (size_t len : {size_t{0}, size_t{1}, size_t{512}, size_t{4095}, size_t{4096 + 16},
                     size_t{3 * 4096 - 512}}) {
    std::vector<uint8_t> buf(len, 0xab);
    auto st = ctx.crypt(pk, Direction::kEncrypt, Dun(0), buf);
    ASSERT_FALSE(st) << len;
    EXPECT_EQ(st.error().code, Errc::kMisaligned) << len;
    EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0xab; }));
  }
}

TEST(CryptErrors, DunOverflowIsRejectedAndBufferUntouched) {
  auto pk = ProgrammedKey(make_key({Algorithm::kAesXts, KeySize::k128, 512}, uint8_t{2}), 1);
  CryptContext ctx;
  const std::pair<uint64_t, size_t> bad[] = {{kMaxDun, 2}, {kMaxDun - 1, 3}, {kMaxDun - 7, 9}};
  for (auto [first, units] : bad) {
    std::vector<uint8_t> buf(units * 512, 0x5a);
    auto st = ctx.crypt(pk, Direction::kEncrypt, Dun(first), buf);
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code, Errc::kOverflow);
    EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0x5a; }));
  }
  // The last representable DUN itself is fine.
  std::vector<uint8_t> ok(512, 1);
  EXPECT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(kMaxDun), ok));
  std::vector<uint8_t> ok2(2 * 512, 1);
  EXPECT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(kMaxDun - 1), ok2));
}

TEST(CryptContextReuse, InterleavedKeysAndDirectionsStayCorrect) {
  // One worker context switching keys and directions must give the same bytes as
  // fresh contexts (keyed state is per key and per direction).
  auto k1 = ProgrammedKey(make_key({Algorithm::kAesXts, KeySize::k256, 512}, uint8_t{51}), 1);
  auto k2 = ProgrammedKey(make_key({Algorithm::kEssivAesCbc, KeySize::k128, 512}, uint8_t{52}), 2);
  const auto pt = pattern(2048, 53);
  std::vector<uint8_t> e1 = pt, e2 = pt;
  {
    CryptContext fresh;
    ASSERT_TRUE(fresh.crypt(k1, Direction::kEncrypt, Dun(9), e1));
  }
  {
    CryptContext fresh;
    ASSERT_TRUE(fresh.crypt(k2, Direction::kEncrypt, Dun(9), e2));
  }
  CryptContext ctx;
  for (int round = 0; round < 3; ++round) {
    auto a = pt, b = pt;
    ASSERT_TRUE(ctx.crypt(k1, Direction::kEncrypt, Dun(9), a));
    ASSERT_TRUE(ctx.crypt(k2, Direction::kEncrypt, Dun(9), b));
    EXPECT_EQ(a, e1);
    EXPECT_EQ(b, e2);
    ASSERT_TRUE(ctx.crypt(k1, Direction::kDecrypt, Dun(9), a));
    ASSERT_TRUE(ctx.crypt(k2, Direction::kDecrypt, Dun(9), b));
    EXPECT_EQ(a, pt);
    EXPECT_EQ(b, pt);
  }
}

// Splits `buf` into iovecs at random places (some empty, some a few bytes), so data
// units straddle iovec boundaries in every way.
std::vector<iovec> random_split(std::span<uint8_t> buf, std::mt19937& rng) {
  std::vector<iovec> v;
  size_t off = 0;
  while (off < buf.size()) {
    const size_t kind = rng() % 4;
    size_t n = kind == 0 ? rng() % 17 : kind == 1 ? 1 + rng() % 700 : 1 + rng() % 9000;
    n = std::min(n, buf.size() - off);
    v.push_back({buf.data() + off, n});
    off += n;
  }
  return v;
}

// The scatter/gather form gives the same bytes as the flat in-place form for every
// mode, direction and split, reads the source without writing it, and writes
// nothing outside [dst_off, dst_off + len) of the destination.
TEST(CryptScatterGather, MatchesFlatForRandomSplitsAndOffsets) {
  const unsigned seed = ::testing::UnitTest::GetInstance()->random_seed() + 1301;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const CryptoMode modes[] = {{Algorithm::kAesXts, KeySize::k256, 512},
                              {Algorithm::kAesXts, KeySize::k128, 4096},
                              {Algorithm::kEssivAesCbc, KeySize::k128, 1024},
                              {Algorithm::kAesEcb, KeySize::k256, 512}};
  CryptContext ctx;
  for (int iter = 0; iter < 200; ++iter) {
    const CryptoMode& m = modes[iter % 4];
    const size_t key_len = *key_length(m.alg, m.key_size);
    auto pk = programmed(m, pattern(key_len, static_cast<uint8_t>(iter)));
    const size_t units = 1 + rng() % 9;
    const size_t len = units * m.data_unit_size;
    const size_t src_off = rng() % 3000, dst_off = rng() % 3000;
    const uint64_t dun = rng() % 2 ? rng() : ~uint64_t{0} - units + 1;
    const Direction dir = rng() % 2 ? Direction::kEncrypt : Direction::kDecrypt;
    auto src = pattern(src_off + len + rng() % 100, static_cast<uint8_t>(iter + 7));
    auto dst = pattern(dst_off + len + rng() % 100, static_cast<uint8_t>(iter + 9));
    const auto src_before = src, dst_before = dst;

    std::vector<uint8_t> want(src.begin() + src_off, src.begin() + src_off + len);
    ASSERT_TRUE(ctx.crypt(pk, dir, Dun(dun), want));
    const auto si = random_split(src, rng), di = random_split(dst, rng);
    auto st = ctx.crypt(pk, dir, Dun(dun), si, src_off, di, dst_off, len);
    ASSERT_TRUE(st) << st.error().to_string();
    EXPECT_EQ(src, src_before) << "iteration " << iter << ": source modified";
    EXPECT_TRUE(std::equal(want.begin(), want.end(), dst.begin() + dst_off))
        << "iteration " << iter;
    EXPECT_TRUE(std::equal(dst.begin(), dst.begin() + dst_off, dst_before.begin()));
    EXPECT_TRUE(
        std::equal(dst.begin() + dst_off + len, dst.end(), dst_before.begin() + dst_off + len));
  }
}

TEST(CryptScatterGather, InPlaceThroughTheSameIovecsMatchesFlat) {
  auto pk = programmed({Algorithm::kAesXts, KeySize::k256, 4096}, pattern(64, 3));
  std::mt19937 rng(5);
  auto buf = pattern(5 * 4096, 4);
  auto want = buf;
  CryptContext ctx;
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(77), want));
  const auto iov = random_split(buf, rng);
  ASSERT_TRUE(ctx.crypt(pk, Direction::kEncrypt, Dun(77), iov, 0, iov, 0, buf.size()));
  EXPECT_EQ(buf, want);
}

TEST(CryptScatterGather, OutOfPlaceFlatMatchesInPlace) {
  auto pk = programmed({Algorithm::kEssivAesCbc, KeySize::k128, 512}, pattern(16, 8));
  const auto in = pattern(4 * 512, 9);
  auto want = in;
  std::vector<uint8_t> out(in.size());
  CryptContext ctx;
  ASSERT_TRUE(ctx.crypt(pk, Direction::kDecrypt, Dun(3), want));
  ASSERT_TRUE(ctx.crypt(pk, Direction::kDecrypt, Dun(3), in, out));
  EXPECT_EQ(out, want);
  std::vector<uint8_t> short_out(in.size() - 512);
  EXPECT_EQ(ctx.crypt(pk, Direction::kDecrypt, Dun(3), in, short_out).error().code,
            Errc::kInvalidArgument);
}

TEST(CryptScatterGather, ShortListsAreRejectedAndNothingIsWritten) {
  auto pk = programmed({Algorithm::kAesXts, KeySize::k256, 512}, pattern(64, 3));
  auto src = pattern(1024, 1);
  auto dst = pattern(1024, 2);
  const auto dst_before = dst;
  const iovec s{src.data(), src.size()}, d{dst.data(), dst.size()};
  CryptContext ctx;
  EXPECT_EQ(ctx.crypt(pk, Direction::kEncrypt, Dun(0), {&s, 1}, 512, {&d, 1}, 0, 1024).error().code,
            Errc::kOutOfRange);
  EXPECT_EQ(ctx.crypt(pk, Direction::kEncrypt, Dun(0), {&s, 1}, 0, {&d, 1}, 1, 1024).error().code,
            Errc::kOutOfRange);
  EXPECT_EQ(ctx.crypt(pk, Direction::kEncrypt, Dun(0), {&s, 1}, 0, {&d, 1}, 0, 100).error().code,
            Errc::kMisaligned);
  EXPECT_EQ(dst, dst_before);
}

}  // namespace
}  // namespace iceblk::ice
