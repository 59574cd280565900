// The secure-world channel's header decoder (check_request_header) and the key blob
// error -> wire status mapping (key_blob_status).
#include "secure_world/wire.h"

#include <gtest/gtest.h>

#include <array>

#include "ice/key_blob.h"

namespace iceblk::secure_world {
namespace {

RequestHeader hdr(uint32_t magic, uint16_t op, uint16_t reserved, uint32_t len) {
  RequestHeader h;
  h.magic = magic;
  h.op = op;
  h.reserved = reserved;
  h.payload_len = len;
  return h;
}

TEST(SecureWorldWire, AcceptsEachOpWithItsExactLength) {
  EXPECT_EQ(check_request_header(hdr(kMagic, 1, 0, 140)).value(), 140u);
  EXPECT_EQ(check_request_header(hdr(kMagic, 2, 0, 4)).value(), 4u);
  EXPECT_EQ(check_request_header(hdr(kMagic, 3, 0, 0)).value(), 0u);
}

TEST(SecureWorldWire, RejectsFramingErrors) {
  const RequestHeader bad[] = {
      hdr(0, 3, 0, 0),                    // magic
      hdr(kMagic ^ 0x100, 3, 0, 0),       // magic, one bit off
      hdr(kMagic, 3, 1, 0),               // reserved
      hdr(kMagic, 3, 0x8000, 0),          // reserved
      hdr(kMagic, 1, 0, 0xffffffff),      // huge
      hdr(kMagic, 1, 0, kMaxPayloadLen + 1),
      hdr(kMagic, 1, 0, 139),             // short SET_KEY
      hdr(kMagic, 1, 0, 141),             // long SET_KEY
      hdr(kMagic, 2, 0, 0),
      hdr(kMagic, 3, 0, 8),
      hdr(kMagic, 0, 0, 0),               // unknown ops
      hdr(kMagic, 4, 0, 0),
      hdr(kMagic, 0xffff, 0, 0),
  };
  for (const auto& h : bad) {
    auto r = check_request_header(h);
    ASSERT_FALSE(r) << h.op.get() << "/" << h.payload_len.get();
    EXPECT_EQ(r.error().code, Errc::kProtocol);
  }
}

TEST(SecureWorldWire, LayoutMatchesTheDocument) {
  // docs/secure-world.md: magic "ICSW" in little-endian byte order.
  const auto h = hdr(kMagic, 1, 0, 140);
  const auto* b = reinterpret_cast<const uint8_t*>(&h);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b), 4), "ICSW");
  EXPECT_EQ(b[4], 1);
  EXPECT_EQ(b[8], 140);
  EXPECT_EQ(offsetof(SetKeyPayload, blob) + offsetof(ice::KeyBlobWire, key), 12u);
}

TEST(SecureWorldWire, KeyBlobErrorsMapToTheirWireStatus) {
  const auto caps = ice::capabilities_for({{ice::Algorithm::kAesXts, ice::KeySize::k256}},
                                          /*allow_ecb=*/false);
  std::array<uint8_t, ice::kKeyBlobSize> blob{};
  blob[0] = 0;   // AES-XTS
  blob[1] = 3;   // 4096-byte data units
  blob[2] = 3;   // 256-bit
  blob[4] = 64;  // key_len
  for (size_t i = 0; i < 64; ++i) blob[8 + i] = static_cast<uint8_t>(i + 1);
  ASSERT_TRUE(ice::parse_key_blob(blob, caps));

  auto unsupported = blob;
  unsupported[3] = 1;  // key_type: hardware-wrapped
  auto u = ice::parse_key_blob(unsupported, caps);
  ASSERT_FALSE(u);
  EXPECT_EQ(key_blob_status(u.error()), WireStatus::kUnsupported);

  auto invalid = blob;
  invalid[6] = 1;  // reserved
  auto i = ice::parse_key_blob(invalid, caps);
  ASSERT_FALSE(i);
  EXPECT_EQ(key_blob_status(i.error()), WireStatus::kInvalid);
}

}  // namespace
}  // namespace iceblk::secure_world
