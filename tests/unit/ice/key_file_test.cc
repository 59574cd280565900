// Key files (ice::parse_key_file / load_key_file): raw bytes or hex text, the length
// the algorithm needs, and messages that name lengths, never key bytes.
#include "ice/key_file.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace iceblk::ice {
namespace {

const CryptoMode kXts256{Algorithm::kAesXts, KeySize::k256, 4096};  // 64-byte key

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

TEST(KeyFile, RawBytesOfTheKeyLength) {
  const std::string raw(64, '\x5a');
  auto k = parse_key_file(bytes(raw), kXts256, "k.bin");
  ASSERT_TRUE(k) << k.error().to_string();
  EXPECT_TRUE(k->equals(bytes(raw)));
}

TEST(KeyFile, HexTextWithWhitespaceAndEitherCase) {
  std::string hex;
  std::vector<uint8_t> want;
  for (int i = 0; i < 64; ++i) {
    const char* digits = "0123456789abcdef";
    hex += (i % 2) ? static_cast<char>(std::toupper(digits[i % 16])) : digits[i % 16];
    hex += digits[(i * 7) % 16];
    want.push_back(static_cast<uint8_t>((i % 16) << 4 | ((i * 7) % 16)));
    if (i % 8 == 7) hex += (i % 16 == 7) ? "\n" : " \t";
  }
  auto k = parse_key_file(bytes(hex + "\r\n"), kXts256, "k.hex");
  ASSERT_TRUE(k) << k.error().to_string();
  EXPECT_TRUE(k->equals(want));
}

TEST(KeyFile, WrongLengthNamesBothLengthsAndNoKeyBytes) {
  const std::string short_hex = std::string(62, 'a') + "\n";
  auto k = parse_key_file(bytes(short_hex), kXts256, "k.hex");
  ASSERT_FALSE(k);
  EXPECT_EQ(k.error().code, Errc::kInvalidArgument);
  EXPECT_NE(k.error().message.find("needs a 64-byte key (128 hex digits), the file holds 31 bytes"),
            std::string::npos)
      << k.error().message;
  EXPECT_EQ(k.error().message.find("aaaa"), std::string::npos) << k.error().message;
  // One hex digit too many (odd count) and far too many are refused too.
  EXPECT_FALSE(parse_key_file(bytes(std::string(129, 'b')), kXts256, "k"));
  EXPECT_FALSE(parse_key_file(bytes(std::string(1000, 'c')), kXts256, "k"));
  // Not hex, not the raw length.
  EXPECT_FALSE(parse_key_file(bytes(std::string(128, 'z')), kXts256, "k"));
  EXPECT_FALSE(parse_key_file({}, kXts256, "k"));
}

TEST(KeyFile, TooLargeAndMissingFiles) {
  const std::string big(kMaxKeyFileSize + 1, 'a');
  auto k = parse_key_file(bytes(big), kXts256, "big");
  ASSERT_FALSE(k);
  EXPECT_NE(k.error().message.find("too large"), std::string::npos);
  auto missing = load_key_file("/nonexistent/iceblk-key", kXts256);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::kNotFound);
}

}  // namespace
}  // namespace iceblk::ice
