#include "ice/key.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include "ice_test_util.h"

namespace iceblk::ice {
namespace {

using test::pattern;
using test::to_hex;

TEST(Key, CreateKeepsModeAndMaterial) {
  for (const CryptoMode& m : test::all_modes(4096)) {
    auto bytes = pattern(*key_length(m.alg, m.key_size), 3);
    auto k = Key::create(m, bytes);
    ASSERT_TRUE(k) << k.error().to_string();
    EXPECT_EQ(k->mode(), m);
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), k->material().begin(),
                           k->material().end()));
    if (m.alg != Algorithm::kEssivAesCbc) {
      EXPECT_TRUE(k->essiv_salt().empty());
    }
  }
}

TEST(Key, EssivSaltIsSha256OfKey) {
  auto bytes = pattern(16, 7);
  auto k = Key::create({Algorithm::kEssivAesCbc, KeySize::k128, 4096}, bytes);
  ASSERT_TRUE(k);
  uint8_t digest[32];
  unsigned len = 0;
  ASSERT_EQ(EVP_Digest(bytes.data(), bytes.size(), digest, &len, EVP_sha256(), nullptr), 1);
  ASSERT_EQ(k->essiv_salt().size(), 32u);
  EXPECT_EQ(to_hex(k->essiv_salt()), to_hex(std::span<const uint8_t>(digest, len)));
}

TEST(Key, RejectsWrongLength) {
  for (const CryptoMode& m : test::all_modes(512)) {
    const size_t need = *key_length(m.alg, m.key_size);
    for (size_t len : {size_t{0}, need - 1, need + 1, need * 2, size_t{128}}) {
      if (len == need) continue;
      auto bytes = pattern(len, 5);
      auto k = Key::create(m, bytes);
      ASSERT_FALSE(k) << algorithm_name(m.alg, m.key_size) << " len " << len;
      EXPECT_EQ(k.error().code, Errc::kInvalidArgument);
      if (len >= 4) {  // the message never carries key bytes
        EXPECT_EQ(k.error().message.find(to_hex(std::span(bytes).first(4))), std::string::npos);
      }
    }
  }
}

TEST(Key, RejectsEqualXtsHalves) {
  for (KeySize ks : {KeySize::k128, KeySize::k256}) {
    const size_t need = *key_length(Algorithm::kAesXts, ks);
    auto half = pattern(need / 2, 9);
    std::vector<uint8_t> bytes = half;
    bytes.insert(bytes.end(), half.begin(), half.end());
    auto k = Key::create({Algorithm::kAesXts, ks, 4096}, bytes);
    ASSERT_FALSE(k);
    EXPECT_EQ(k.error().code, Errc::kInvalidArgument);
    EXPECT_NE(k.error().message.find("halves are equal"), std::string::npos);
    EXPECT_EQ(k.error().message.find(to_hex(std::span(half).first(4))), std::string::npos);
    // One differing byte is enough.
    bytes.back() ^= 1;
    EXPECT_TRUE(Key::create({Algorithm::kAesXts, ks, 4096}, bytes));
  }
}

TEST(Key, RejectsUnsupportedModes) {
  auto bytes = pattern(64, 1);
  const CryptoMode bad[] = {
      {Algorithm::kBitlockerAesCbc, KeySize::k256, 4096},
      {Algorithm::kBitlockerAesCbc, KeySize::k128, 4096},
      {Algorithm::kAesXts, KeySize::k192, 4096},
      {Algorithm::kAesXts, KeySize::k512, 4096},
      {Algorithm::kEssivAesCbc, KeySize::k256, 4096},
      {Algorithm::kAesXts, KeySize::k256, 1024 + 512},
      {Algorithm::kAesXts, KeySize::k256, 256},
      {Algorithm::kAesXts, KeySize::k256, 131072},
  };
  for (const CryptoMode& m : bad) {
    auto k = Key::create(m, bytes);
    ASSERT_FALSE(k);
    EXPECT_EQ(k.error().code, Errc::kUnsupported) << k.error().message;
  }
}

TEST(Key, MoveKeepsMaterial) {
  auto bytes = pattern(64, 2);
  auto k = Key::create({Algorithm::kAesXts, KeySize::k256, 512}, bytes);
  ASSERT_TRUE(k);
  Key moved(std::move(*k));
  EXPECT_EQ(to_hex(moved.material()), to_hex(bytes));
}

}  // namespace
}  // namespace iceblk::ice
