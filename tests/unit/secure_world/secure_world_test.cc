// The out-of-band key service over real unix sockets: per-VM isolation on one shared
// engine (spec §7), malformed clients, the audit log, start/stop.
#include "secure_world/secure_world.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <poll.h>
#include <spdlog/sinks/ostream_sink.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <sstream>

#include "base/unique_fd.h"
#include "driver/secure_world_client.h"
#include "ice/key_blob.h"
#include "secure_world/wire.h"
#include "support/temp_dir.h"
#include "support/reference_cipher.h"
#include "support/socket.h"

namespace iceblk::secure_world {
namespace {

namespace fs = std::filesystem;
using driver::SecureWorldClient;
using ice::Algorithm;
using ice::KeySize;

constexpr ice::CryptoMode kXts256{Algorithm::kAesXts, KeySize::k256, 512};

std::vector<ice::Capability> test_caps() {
  return ice::capabilities_for({{Algorithm::kAesXts, KeySize::k256},
                                {Algorithm::kAesXts, KeySize::k128},
                                {Algorithm::kEssivAesCbc, KeySize::k128}},
                               /*allow_ecb=*/false);
}

// 64 distinct, recognisable key bytes starting at `seed` (halves differ).
std::array<uint8_t, 64> make_key(uint8_t seed) {
  std::array<uint8_t, 64> k{};
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(seed + 7 * i + 1);
  return k;
}

std::array<uint8_t, ice::kKeyBlobSize> blob_for(std::span<const uint8_t> key,
                                                const ice::CryptoMode& mode = kXts256) {
  std::array<uint8_t, ice::kKeyBlobSize> b{};
  EXPECT_TRUE(ice::encode_key_blob(mode, key, b));
  return b;
}

// Reference AES-256-XTS of one 512-byte unit straight from OpenSSL, independent of
// the engine's cipher code: tweak = le64(dun) || le64(0).
std::vector<uint8_t> reference_xts(std::span<const uint8_t> key, uint64_t dun,
                                   std::span<const uint8_t> pt) {
  return test::reference_xts(key, dun, pt, pt.size());
}

// Raw socket for malformed clients.
UniqueFd raw_connect(const std::string& path) {
  UniqueFd fd = test::raw_connect(path);
  EXPECT_TRUE(fd.valid()) << strerror(errno);
  return fd;
}

void send_bytes(int fd, std::span<const uint8_t> b) {
  ASSERT_EQ(static_cast<ssize_t>(b.size()), ::send(fd, b.data(), b.size(), MSG_NOSIGNAL));
}

// Reads until EOF/reset or 2 s of silence; returns everything received.
std::vector<uint8_t> read_until_closed(int fd, bool* closed) {
  std::vector<uint8_t> got;
  *closed = false;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) return got;  // silence: still open
    uint8_t buf[512];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      *closed = true;
      return got;
    }
    got.insert(got.end(), buf, buf + n);
  }
}

// Reads exactly `n` bytes (waiting up to 5 s), then watches for 100 ms whether the
// service closes the connection. Slowness can only make an "is still open"
// expectation pass, never fail spuriously.
std::vector<uint8_t> read_exactly(int fd, size_t n, bool* closed) {
  std::vector<uint8_t> got;
  *closed = false;
  while (got.size() < n) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return got;
    uint8_t buf[512];
    const ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - got.size()), 0);
    if (r <= 0) {
      *closed = true;
      return got;
    }
    got.insert(got.end(), buf, buf + r);
  }
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 100) > 0) {
    uint8_t b;
    *closed = ::recv(fd, &b, 1, MSG_DONTWAIT) <= 0;
  }
  return got;
}

std::vector<uint8_t> header_bytes(uint32_t magic, uint16_t op, uint16_t reserved,
                                  uint32_t payload_len) {
  RequestHeader h;
  h.magic = magic;
  h.op = op;
  h.reserved = reserved;
  h.payload_len = payload_len;
  std::vector<uint8_t> v(sizeof h);
  std::memcpy(v.data(), &h, sizeof h);
  return v;
}

struct Reply {
  uint16_t op;
  WireStatus status;
  uint32_t payload_len;
};
std::vector<Reply> parse_replies(const std::vector<uint8_t>& bytes) {
  std::vector<Reply> out;
  size_t off = 0;
  while (bytes.size() - off >= kHeaderSize) {
    auto h = load_obj<ResponseHeader>(bytes.data() + off);
    EXPECT_EQ(h.magic.get(), kMagic);
    out.push_back({h.op, static_cast<WireStatus>(h.status.get()), h.payload_len});
    off += kHeaderSize + h.payload_len;
  }
  EXPECT_EQ(off, bytes.size());
  return out;
}

class SecureWorldTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = iceblk::test::make_temp_dir("iceblk-sw");
    ASSERT_FALSE(dir_.empty());
    auto e = ice::Engine::create({});
    ASSERT_TRUE(e) << e.error().to_string();
    engine_ = std::move(*e);
    // Three VMs with disjoint ranges on one 64-slot engine; slots 20..31 belong to nobody.
    vm_a_ = add_vm("vm-a", {0, 8});
    vm_b_ = add_vm("vm-b", {8, 8});
    vm_c_ = add_vm("vm-c", {32, 4});
    sink_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(log_text_);
  }
  void TearDown() override {
    if (sw_) sw_->stop();
    sw_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  VmId add_vm(const std::string& name, ice::SlotRange r) {
    auto id = engine_->add_vm(name, r);
    EXPECT_TRUE(id) << id.error().to_string();
    return *id;
  }
  std::string path(const std::string& vm) const { return dir_ + "/" + vm + ".sock"; }

  std::vector<VmChannel> channels() const {
    return {{"vm-a", vm_a_, path("vm-a")}, {"vm-b", vm_b_, path("vm-b")},
            {"vm-c", vm_c_, path("vm-c")}};
  }

  void start(SecureWorldOptions opts = {}) {
    if (opts.capabilities.empty()) opts.capabilities = test_caps();
    opts.audit_sinks.push_back(sink_);
    auto sw = SecureWorld::create(*engine_, channels(), std::move(opts));
    ASSERT_TRUE(sw) << sw.error().to_string();
    sw_ = std::move(*sw);
    auto st = sw_->start();
    ASSERT_TRUE(st) << st.error().to_string();
  }

  SecureWorldClient client(const std::string& vm) {
    auto c = SecureWorldClient::connect(path(vm));
    EXPECT_TRUE(c) << c.error().to_string();
    return std::move(*c);
  }

  // The key in `slot` equals `key`: its material, and its ciphertext against OpenSSL.
  void expect_slot_holds(uint32_t slot, const std::array<uint8_t, 64>& key) {
    auto pk = engine_->lookup(PhysSlot(slot));
    ASSERT_TRUE(pk) << "slot " << slot << ": " << pk.error().to_string();
    EXPECT_EQ((*pk)->key.mode(), kXts256);
    ASSERT_EQ((*pk)->key.material().size(), key.size());
    EXPECT_TRUE(std::equal(key.begin(), key.end(), (*pk)->key.material().begin()));
    std::vector<uint8_t> buf(512);
    std::iota(buf.begin(), buf.end(), uint8_t{0});
    const auto expected = reference_xts(key, 0x1234, buf);
    ice::CryptContext ctx;
    auto st = engine_->crypt(ctx, PhysSlot(slot), ice::Direction::kEncrypt, Dun(0x1234), buf);
    ASSERT_TRUE(st) << st.error().to_string();
    EXPECT_EQ(buf, expected) << "slot " << slot;
  }
  void expect_slot_empty(uint32_t slot) {
    auto pk = engine_->lookup(PhysSlot(slot));
    ASSERT_FALSE(pk) << "slot " << slot << " holds a key";
    EXPECT_EQ(pk.error().code, Errc::kNotFound);
  }

  // A well-behaved client on vm-a still gets served.
  void expect_service_alive() {
    auto c = client("vm-a");
    auto r = c.query_range();
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->offset, 0u);
    const auto k = make_key(0x77);
    ASSERT_TRUE(c.set_key(PhysSlot(6), kXts256, k));
    expect_slot_holds(6, k);
  }

  std::string dir_;
  std::unique_ptr<ice::Engine> engine_;
  VmId vm_a_, vm_b_, vm_c_;
  std::ostringstream log_text_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
  std::unique_ptr<SecureWorld> sw_;
};

TEST_F(SecureWorldTest, EachVmSetsAndInvalidatesInItsOwnRange) {
  start();
  auto a = client("vm-a");
  auto b = client("vm-b");
  auto c = client("vm-c");
  const auto ka = make_key(0x10), kb = make_key(0x20), kc = make_key(0x30);
  for (uint32_t s : {0u, 7u}) ASSERT_TRUE(a.set_key(PhysSlot(s), kXts256, ka));
  for (uint32_t s : {8u, 15u}) ASSERT_TRUE(b.set_key(PhysSlot(s), kXts256, kb));
  ASSERT_TRUE(c.set_key(PhysSlot(35), blob_for(kc)));  // raw blob overload
  expect_slot_holds(0, ka);
  expect_slot_holds(7, ka);
  expect_slot_holds(8, kb);
  expect_slot_holds(15, kb);
  expect_slot_holds(35, kc);

  ASSERT_TRUE(a.invalidate_key(PhysSlot(7)));
  ASSERT_TRUE(b.invalidate_key(PhysSlot(8)));
  expect_slot_empty(7);
  expect_slot_empty(8);
  expect_slot_holds(0, ka);
  expect_slot_holds(15, kb);
  // Invalidating an empty slot succeeds.
  EXPECT_TRUE(a.invalidate_key(PhysSlot(7)));
  // Replacing a key in one's own range works.
  const auto ka2 = make_key(0x11);
  ASSERT_TRUE(a.set_key(PhysSlot(0), kXts256, ka2));
  expect_slot_holds(0, ka2);
}

TEST_F(SecureWorldTest, QueryRangeReturnsTheCallersRangeOnly) {
  start();
  struct Want {
    const char* vm;
    uint32_t offset, count;
  };
  for (const Want& w : {Want{"vm-a", 0, 8}, Want{"vm-b", 8, 8}, Want{"vm-c", 32, 4}}) {
    auto c = client(w.vm);
    auto r = c.query_range();
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->offset, w.offset) << w.vm;
    EXPECT_EQ(r->count, w.count) << w.vm;
  }
}

TEST_F(SecureWorldTest, OtherVmCannotProgramEvictOrReplaceAKey) {
  start();
  auto a = client("vm-a");
  auto b = client("vm-b");
  auto c = client("vm-c");
  const auto ka = make_key(0x40), kb = make_key(0x50);
  ASSERT_TRUE(a.set_key(PhysSlot(3), kXts256, ka));
  ASSERT_TRUE(a.set_key(PhysSlot(7), kXts256, ka));

  // Replace A's key: denied.
  auto r = b.set_key(PhysSlot(3), kXts256, kb);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  r = c.set_key(PhysSlot(7), kXts256, kb);  // A's last slot, from a third VM
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  // Evict A's key: denied.
  r = b.invalidate_key(PhysSlot(3));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  r = b.invalidate_key(PhysSlot(7));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  // Program an empty slot of A: denied, stays empty.
  r = b.set_key(PhysSlot(5), kXts256, kb);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  expect_slot_empty(5);
  // The range check comes before blob validation: a malformed blob aimed at A's slot
  // is DENIED, not INVALID.
  auto bad = blob_for(kb);
  bad[6] = 1;  // reserved
  r = b.set_key(PhysSlot(3), bad);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);

  // A's keys are unchanged: material and ciphertext.
  expect_slot_holds(3, ka);
  expect_slot_holds(7, ka);

  // Slots that belong to nobody, just past B's range, past the engine, and u32 max.
  for (uint32_t s : {16u, 20u, 31u, 36u, 63u, 64u, 255u, 256u, 0x7fffffffu, 0xffffffffu}) {
    r = b.set_key(PhysSlot(s), kXts256, kb);
    ASSERT_FALSE(r) << s;
    EXPECT_EQ(r.error().code, Errc::kPermissionDenied) << s;
    r = b.invalidate_key(PhysSlot(s));
    ASSERT_FALSE(r) << s;
    EXPECT_EQ(r.error().code, Errc::kPermissionDenied) << s;
  }
  for (uint32_t s = 16; s < 64; ++s) {
    if (s >= 32 && s < 36) continue;
    expect_slot_empty(s);
  }
  // DENIED does not cost the caller its connection.
  EXPECT_TRUE(b.connected());
  EXPECT_TRUE(b.set_key(PhysSlot(9), kXts256, kb));
  expect_slot_holds(9, kb);
}

TEST_F(SecureWorldTest, BadBlobsAreRejectedAndTheConnectionStaysUsable) {
  start();
  auto a = client("vm-a");
  const auto k = make_key(0x60);
  ASSERT_TRUE(a.set_key(PhysSlot(2), kXts256, k));

  struct Case {
    const char* what;
    std::array<uint8_t, ice::kKeyBlobSize> blob;
    Errc want;
  };
  std::vector<Case> cases;
  auto base = blob_for(make_key(0x61));
  {
    auto b = base;
    b[4] = 63;  // key_len
    cases.push_back({"key_len 63", b, Errc::kInvalidArgument});
  }
  {
    auto b = base;
    b[4] = 0;
    b[5] = 1;  // key_len 256
    cases.push_back({"key_len 256", b, Errc::kInvalidArgument});
  }
  {
    auto b = base;
    std::memcpy(b.data() + 8 + 32, b.data() + 8, 32);
    cases.push_back({"equal XTS halves", b, Errc::kInvalidArgument});
  }
  {
    auto b = base;
    b[7] = 0x01;
    cases.push_back({"reserved nonzero", b, Errc::kInvalidArgument});
  }
  {
    auto b = base;
    b[8 + 100] = 0x5a;
    cases.push_back({"tail nonzero", b, Errc::kInvalidArgument});
  }
  {
    auto b = base;
    b[3] = 1;
    cases.push_back({"key_type wrapped", b, Errc::kUnsupported});
  }
  {
    auto b = base;
    b[0] = 2;  // ECB, not advertised here
    cases.push_back({"unadvertised ECB", b, Errc::kUnsupported});
  }
  {
    auto b = base;
    b[0] = 1;  // BitLocker
    cases.push_back({"BitLocker", b, Errc::kUnsupported});
  }
  {
    auto b = base;
    b[1] = 8;  // data unit 128 KiB
    cases.push_back({"data unit exp 8", b, Errc::kUnsupported});
  }
  for (const auto& c : cases) {
    for (uint32_t slot : {1u, 2u}) {
      auto r = a.set_key(PhysSlot(slot), c.blob);
      ASSERT_FALSE(r) << c.what;
      EXPECT_EQ(r.error().code, c.want) << c.what << ": " << r.error().to_string();
      EXPECT_TRUE(a.connected()) << c.what;
    }
  }
  // Nothing was programmed; the existing key was not replaced.
  expect_slot_empty(1);
  expect_slot_holds(2, k);
  // The same connection still works.
  ASSERT_TRUE(a.set_key(PhysSlot(1), kXts256, k));
  expect_slot_holds(1, k);
}

TEST_F(SecureWorldTest, MalformedFramingGetsBadMessageAndOnlyThatConnectionCloses) {
  start();
  auto good = client("vm-b");  // connected before, must survive all of this
  const auto kb = make_key(0x70);
  ASSERT_TRUE(good.set_key(PhysSlot(10), kXts256, kb));

  struct Case {
    const char* what;
    std::vector<uint8_t> bytes;
    bool shut_wr;  // half-close after sending (a truncated message)
    uint16_t want_op;
  };
  std::vector<uint8_t> garbage(40);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<uint8_t>(0x9e ^ (i * 37));
  auto set_key_hdr = header_bytes(kMagic, 1, 0, sizeof(SetKeyPayload));
  auto truncated_payload = set_key_hdr;
  truncated_payload.resize(set_key_hdr.size() + 50, 0xab);
  auto slot_max = header_bytes(kMagic, 2, 0, 4);
  slot_max.insert(slot_max.end(), {0xff, 0xff, 0xff, 0xff});

  const std::vector<Case> cases = {
      {"garbage", garbage, false, load_obj<le16>(garbage.data() + 4)},
      {"wrong magic", header_bytes(0x12345678, 3, 0, 0), false, 3},
      {"truncated header", {0x49, 0x43, 0x53, 0x57, 0x03}, true, 0},
      {"huge payload_len", header_bytes(kMagic, 1, 0, 0xffffffff), false, 1},
      {"payload_len above cap", header_bytes(kMagic, 1, 0, kMaxPayloadLen + 1), false, 1},
      {"payload_len wrong for op", header_bytes(kMagic, 2, 0, 8), false, 2},
      {"query with payload", header_bytes(kMagic, 3, 0, 4), false, 3},
      {"unknown op", header_bytes(kMagic, 99, 0, 0), false, 99},
      {"op 0", header_bytes(kMagic, 0, 0, 0), false, 0},
      {"reserved header nonzero", header_bytes(kMagic, 3, 1, 0), false, 3},
      {"truncated payload", truncated_payload, true, 1},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    UniqueFd fd = raw_connect(path("vm-a"));
    send_bytes(fd.get(), c.bytes);
    if (c.shut_wr) ::shutdown(fd.get(), SHUT_WR);
    bool closed = false;
    const auto got = read_until_closed(fd.get(), &closed);
    EXPECT_TRUE(closed) << "service kept a bad connection open";
    const auto replies = parse_replies(got);
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].status, WireStatus::kBadMessage);
    EXPECT_EQ(replies[0].op, c.want_op);
    EXPECT_EQ(replies[0].payload_len, 0u);
  }
  // Slot 0xffffffff in a well-formed message is not a framing error: DENIED, and the
  // connection stays open.
  {
    UniqueFd fd = raw_connect(path("vm-a"));
    send_bytes(fd.get(), slot_max);
    bool closed = false;
    const auto replies = parse_replies(read_exactly(fd.get(), kHeaderSize, &closed));
    EXPECT_FALSE(closed);
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].status, WireStatus::kDenied);
  }
  // A client that dies mid-message (no reply possible) does not disturb anything.
  {
    UniqueFd fd = raw_connect(path("vm-a"));
    send_bytes(fd.get(), std::span(set_key_hdr).first(7));
  }

  // The earlier connection and new ones are still served.
  ASSERT_TRUE(good.query_range());
  ASSERT_TRUE(good.invalidate_key(PhysSlot(10)));
  expect_slot_empty(10);
  expect_service_alive();

  // Every bad message was audited on the right VM.
  size_t bad = 0;
  for (const auto& rec : sw_->audit_log()) {
    if (rec.status == WireStatus::kBadMessage) {
      ++bad;
      EXPECT_EQ(rec.vm_name, "vm-a");
    }
  }
  EXPECT_EQ(bad, cases.size() + 1);  // + the client that died mid-message
}

TEST_F(SecureWorldTest, PipelinedRequestsAreAllAnswered) {
  start();
  const auto k = make_key(0x21);
  auto blob = blob_for(k);
  std::vector<uint8_t> msg = header_bytes(kMagic, 3, 0, 0);
  auto set = header_bytes(kMagic, 1, 0, sizeof(SetKeyPayload));
  set.insert(set.end(), {12, 0, 0, 0});  // slot 12
  set.insert(set.end(), blob.begin(), blob.end());
  msg.insert(msg.end(), set.begin(), set.end());
  auto inv = header_bytes(kMagic, 2, 0, 4);
  inv.insert(inv.end(), {13, 0, 0, 0});
  msg.insert(msg.end(), inv.begin(), inv.end());
  auto denied = header_bytes(kMagic, 2, 0, 4);
  denied.insert(denied.end(), {2, 0, 0, 0});
  msg.insert(msg.end(), denied.begin(), denied.end());

  UniqueFd fd = raw_connect(path("vm-b"));
  // Byte by byte first half, rest in one go: framing must not depend on segmentation.
  const size_t half = msg.size() / 2;
  for (size_t i = 0; i < half; ++i) send_bytes(fd.get(), std::span(msg).subspan(i, 1));
  send_bytes(fd.get(), std::span(msg).subspan(half));
  bool closed = false;
  const auto got = read_exactly(fd.get(), 4 * kHeaderSize + sizeof(RangePayload), &closed);
  EXPECT_FALSE(closed);
  const auto replies = parse_replies(got);
  ASSERT_EQ(replies.size(), 4u);
  EXPECT_EQ(replies[0].op, 3);
  EXPECT_EQ(replies[0].status, WireStatus::kOk);
  EXPECT_EQ(replies[0].payload_len, sizeof(RangePayload));
  const auto rp = load_obj<RangePayload>(got.data() + kHeaderSize);
  EXPECT_EQ(rp.slot_offset.get(), 8u);
  EXPECT_EQ(rp.max_slots.get(), 8u);
  EXPECT_EQ(replies[1].status, WireStatus::kOk);
  EXPECT_EQ(replies[2].status, WireStatus::kOk);
  EXPECT_EQ(replies[3].status, WireStatus::kDenied);
  expect_slot_holds(12, k);
}

TEST_F(SecureWorldTest, AuditLogRecordsEveryOpAndNoKeyBytes) {
  start();
  auto a = client("vm-a");
  auto b = client("vm-b");
  const auto ka = make_key(0xa0), kb = make_key(0xb0);
  ASSERT_TRUE(a.set_key(PhysSlot(1), kXts256, ka));
  ASSERT_FALSE(b.set_key(PhysSlot(1), kXts256, kb));  // denied
  auto bad = blob_for(kb);
  std::memcpy(bad.data() + 8 + 32, bad.data() + 8, 32);
  ASSERT_FALSE(b.set_key(PhysSlot(9), bad));  // invalid: equal halves (both = kb's 1st half)
  ASSERT_TRUE(b.invalidate_key(PhysSlot(9)));
  ASSERT_TRUE(a.query_range());
  {
    UniqueFd fd = raw_connect(path("vm-b"));
    auto m = header_bytes(kMagic, 1, 0, 9999);
    send_bytes(fd.get(), m);
    bool closed = false;
    read_until_closed(fd.get(), &closed);
  }
  sw_->stop();  // no writer left: the log text is stable

  const auto log = sw_->audit_log();
  ASSERT_EQ(log.size(), 6u);
  auto expect_rec = [&](size_t i, const char* vm, Op op, std::optional<uint32_t> slot,
                        WireStatus st) {
    SCOPED_TRACE(i);
    EXPECT_EQ(log[i].vm_name, vm);
    EXPECT_EQ(log[i].op, static_cast<uint16_t>(op));
    EXPECT_EQ(log[i].slot, slot);
    EXPECT_EQ(log[i].status, st);
  };
  expect_rec(0, "vm-a", Op::kSetKey, 1, WireStatus::kOk);
  expect_rec(1, "vm-b", Op::kSetKey, 1, WireStatus::kDenied);
  expect_rec(2, "vm-b", Op::kSetKey, 9, WireStatus::kInvalid);
  expect_rec(3, "vm-b", Op::kInvalidateKey, 9, WireStatus::kOk);
  expect_rec(4, "vm-a", Op::kQueryRange, std::nullopt, WireStatus::kOk);
  expect_rec(5, "vm-b", Op::kSetKey, std::nullopt, WireStatus::kBadMessage);

  // Every record reached the log sink, formatted.
  const std::string text = log_text_.str();
  for (const auto& rec : log) {
    EXPECT_NE(text.find(format_audit_record(rec)), std::string::npos) << format_audit_record(rec);
  }
  EXPECT_NE(text.find("vm=vm-b op=SET_KEY slot=1 result=DENIED"), std::string::npos) << text;

  // No key bytes: not as lower/upper hex (whole key or any 8-byte window), not raw.
  for (const auto* key : {&ka, &kb}) {
    for (size_t off = 0; off + 8 <= key->size(); off += 8) {
      std::string lower, upper;
      for (size_t i = off; i < off + 8; ++i) {
        lower += fmt::format("{:02x}", (*key)[i]);
        upper += fmt::format("{:02X}", (*key)[i]);
      }
      EXPECT_EQ(text.find(lower), std::string::npos);
      EXPECT_EQ(text.find(upper), std::string::npos);
      const std::string raw(reinterpret_cast<const char*>(key->data() + off), 8);
      EXPECT_EQ(text.find(raw), std::string::npos);
      for (const auto& rec : log) EXPECT_EQ(rec.detail.find(raw), std::string::npos);
    }
  }
}

TEST_F(SecureWorldTest, StopRemovesSocketsKeepsKeysAndCanRestart) {
  start();
  auto a = client("vm-a");
  const auto k = make_key(0x33);
  ASSERT_TRUE(a.set_key(PhysSlot(4), kXts256, k));
  EXPECT_TRUE(fs::exists(path("vm-a")));
  EXPECT_EQ(fs::status(path("vm-a")).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  sw_->stop();
  EXPECT_FALSE(sw_->running());
  for (const char* vm : {"vm-a", "vm-b", "vm-c"}) EXPECT_FALSE(fs::exists(path(vm))) << vm;
  // The old connection is gone.
  auto r = a.query_range();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kClosed);
  // Keys belong to the secure world's engine, not to the service's lifetime.
  expect_slot_holds(4, k);
  sw_->stop();  // idempotent

  ASSERT_TRUE(sw_->start());
  auto a2 = client("vm-a");
  ASSERT_TRUE(a2.invalidate_key(PhysSlot(4)));
  expect_slot_empty(4);
  EXPECT_EQ(sw_->start().error().code, Errc::kBusy);  // already running
}

TEST_F(SecureWorldTest, VmRemovedFromEngineIsDenied) {
  start();
  auto c = client("vm-c");
  ASSERT_TRUE(c.set_key(PhysSlot(33), kXts256, make_key(1)));
  engine_->remove_vm(vm_c_);
  expect_slot_empty(33);
  auto r = c.set_key(PhysSlot(33), kXts256, make_key(1));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  EXPECT_EQ(c.query_range().error().code, Errc::kPermissionDenied);
  expect_slot_empty(33);
}

TEST_F(SecureWorldTest, ConnectionLimitPerVm) {
  SecureWorldOptions o;
  o.max_connections_per_vm = 2;
  start(std::move(o));
  auto a1 = client("vm-a");
  auto a2 = client("vm-a");
  ASSERT_TRUE(a1.query_range());
  ASSERT_TRUE(a2.query_range());
  auto a3 = client("vm-a");  // accepted by the kernel, then closed by the service
  auto r = a3.query_range();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kClosed);
  // Other VMs have their own budget; a freed slot can be reused.
  auto b = client("vm-b");
  ASSERT_TRUE(b.query_range());
  { auto drop = std::move(a1); }
  for (int i = 0; i < 50; ++i) {  // the service notices the close asynchronously
    auto a4 = client("vm-a");
    if (a4.query_range()) return;
  }
  ADD_FAILURE() << "a closed connection's budget was never returned";
}

TEST_F(SecureWorldTest, CreateAndStartValidation) {
  SecureWorldOptions o;
  o.capabilities = test_caps();
  EXPECT_EQ(SecureWorld::create(*engine_, channels(), {}).error().code, Errc::kInvalidArgument);
  EXPECT_FALSE(SecureWorld::create(*engine_, {{"x", VmId(999), path("x")}}, o));
  EXPECT_FALSE(SecureWorld::create(*engine_, {{"a", vm_a_, path("a")}, {"b", vm_b_, path("a")}}, o));
  EXPECT_FALSE(SecureWorld::create(*engine_, {{"a", vm_a_, path("a")}, {"a2", vm_a_, path("b")}}, o));
  EXPECT_FALSE(SecureWorld::create(*engine_, {{"a", vm_a_, std::string(200, 'x')}}, o));
  EXPECT_FALSE(SecureWorld::create(*engine_, {{"", vm_a_, path("a")}}, o));

  // A live listener on the path: the second service refuses to steal it.
  start();
  auto other = SecureWorld::create(*engine_, {{"vm-a", vm_a_, path("vm-a")}}, o);
  ASSERT_TRUE(other);
  auto st = (*other)->start();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kBusy);
  EXPECT_TRUE(fs::exists(path("vm-a")));  // the failed start did not remove it
  expect_service_alive();

  // A stale socket file (nobody listening) is replaced.
  sw_->stop();
  {
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path("vm-a").data(), path("vm-a").size());
    ASSERT_EQ(0, ::bind(s.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr));
  }
  ASSERT_TRUE(fs::exists(path("vm-a")));
  ASSERT_TRUE(sw_->start());
  expect_service_alive();
}

}  // namespace
}  // namespace iceblk::secure_world
