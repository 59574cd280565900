#include "ice/crypto_mode.h"

#include <gtest/gtest.h>

namespace iceblk::ice {
namespace {

TEST(KeyLength, SupportedModes) {
  EXPECT_EQ(key_length(Algorithm::kAesXts, KeySize::k128), 32u);
  EXPECT_EQ(key_length(Algorithm::kAesXts, KeySize::k256), 64u);
  EXPECT_EQ(key_length(Algorithm::kEssivAesCbc, KeySize::k128), 16u);
  EXPECT_EQ(key_length(Algorithm::kAesEcb, KeySize::k128), 16u);
  EXPECT_EQ(key_length(Algorithm::kAesEcb, KeySize::k256), 32u);
}

TEST(KeyLength, UnsupportedModes) {
  const std::pair<Algorithm, KeySize> bad[] = {
      {Algorithm::kAesXts, KeySize::k192},          {Algorithm::kAesXts, KeySize::k512},
      {Algorithm::kAesXts, KeySize::kInvalid},      {Algorithm::kBitlockerAesCbc, KeySize::k128},
      {Algorithm::kBitlockerAesCbc, KeySize::k256}, {Algorithm::kEssivAesCbc, KeySize::k256},
      {Algorithm::kAesEcb, KeySize::k192},          {static_cast<Algorithm>(9), KeySize::k256},
      {Algorithm::kAesXts, static_cast<KeySize>(7)},
  };
  for (auto [alg, ks] : bad) {
    auto r = key_length(alg, ks);
    ASSERT_FALSE(r) << algorithm_name(alg, ks);
    EXPECT_EQ(r.error().code, Errc::kUnsupported);
  }
}

TEST(DataUnitSizeExp, EveryValidSize) {
  for (uint8_t exp = 0; exp <= 7; ++exp) {
    EXPECT_EQ(data_unit_size_exp(512u << exp), exp);
  }
}

TEST(DataUnitSizeExp, RejectsInvalidSizes) {
  for (uint32_t s : {0u, 1u, 256u, 511u, 513u, 1000u, 4095u, 3072u, 131072u, 0x80000000u}) {
    auto r = data_unit_size_exp(s);
    ASSERT_FALSE(r) << s;
    EXPECT_EQ(r.error().code, Errc::kUnsupported);
  }
}

TEST(ValidateMode, ChecksAlgorithmAndSize) {
  EXPECT_TRUE(validate_mode({Algorithm::kAesXts, KeySize::k256, 4096}));
  EXPECT_TRUE(validate_mode({Algorithm::kEssivAesCbc, KeySize::k128, 65536}));
  EXPECT_EQ(validate_mode({Algorithm::kAesXts, KeySize::k256, 1000}).error().code,
            Errc::kUnsupported);
  EXPECT_EQ(validate_mode({Algorithm::kBitlockerAesCbc, KeySize::k256, 4096}).error().code,
            Errc::kUnsupported);
}

TEST(ParseAlgorithm, NamesRoundTrip) {
  const std::pair<Algorithm, KeySize> modes[] = {
      {Algorithm::kAesXts, KeySize::k128},
      {Algorithm::kAesXts, KeySize::k256},
      {Algorithm::kEssivAesCbc, KeySize::k128},
      {Algorithm::kAesEcb, KeySize::k128},
      {Algorithm::kAesEcb, KeySize::k256},
  };
  for (auto m : modes) {
    const std::string name = algorithm_name(m.first, m.second);
    auto parsed = parse_algorithm(name);
    ASSERT_TRUE(parsed) << name;
    EXPECT_EQ(*parsed, m) << name;
  }
  EXPECT_EQ(algorithm_name(Algorithm::kAesXts, KeySize::k256), "aes-256-xts");
  EXPECT_EQ(algorithm_name(Algorithm::kEssivAesCbc, KeySize::k128), "aes-128-cbc-essiv");
  auto upper = parse_algorithm("AES-256-XTS");
  ASSERT_TRUE(upper);
  EXPECT_EQ(upper->first, Algorithm::kAesXts);
  EXPECT_EQ(upper->second, KeySize::k256);
}

TEST(ParseAlgorithm, RejectsUnknownNames) {
  for (std::string_view n : {"", "aes", "aes-192-xts", "aes-256-cbc-essiv", "bitlocker",
                             "aes-256-xts ", "adiantum"}) {
    auto r = parse_algorithm(n);
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(r.error().code, Errc::kUnsupported);
  }
}

TEST(AlgorithmName, DescribesUnsupportedCombinations) {
  EXPECT_EQ(algorithm_name(Algorithm::kBitlockerAesCbc, KeySize::k256), "bitlocker-aes-cbc/256");
  EXPECT_EQ(algorithm_name(Algorithm::kAesXts, KeySize::k192), "aes-xts/192");
  EXPECT_EQ(algorithm_name(static_cast<Algorithm>(9), KeySize::k128), "alg#9/key-size#1");
}

TEST(Capabilities, EightSizesPerMode) {
  auto caps = capabilities_for({{Algorithm::kAesXts, KeySize::k256}}, false);
  ASSERT_EQ(caps.size(), 8u);
  for (uint8_t i = 0; i < 8; ++i) {
    EXPECT_EQ(caps[i], (Capability{Algorithm::kAesXts, i, KeySize::k256}));
    EXPECT_EQ(caps[i].mode().data_unit_size, 512u << i);
    EXPECT_TRUE(validate_mode(caps[i].mode()));
  }
}

TEST(Capabilities, EcbOnlyWhenAllowedBitlockerNeverDuplicatesOnce) {
  const std::vector<std::pair<Algorithm, KeySize>> algs = {
      {Algorithm::kAesXts, KeySize::k128},          {Algorithm::kAesEcb, KeySize::k256},
      {Algorithm::kBitlockerAesCbc, KeySize::k256}, {Algorithm::kEssivAesCbc, KeySize::k128},
      {Algorithm::kAesXts, KeySize::k128},
  };
  auto without = capabilities_for(algs, false);
  EXPECT_EQ(without.size(), 16u);
  for (const auto& c : without) {
    EXPECT_NE(c.alg, Algorithm::kAesEcb);
    EXPECT_NE(c.alg, Algorithm::kBitlockerAesCbc);
  }
  auto with = capabilities_for(algs, true);
  EXPECT_EQ(with.size(), 24u);
  EXPECT_EQ(std::count_if(with.begin(), with.end(),
                          [](const Capability& c) { return c.alg == Algorithm::kAesEcb; }),
            8);
}

}  // namespace
}  // namespace iceblk::ice
