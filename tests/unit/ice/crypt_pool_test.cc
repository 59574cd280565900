// Crypto threads (ice/crypt_pool.h): a call split across the pool gives the bytes
// and errors of one CryptContext, for every mode, both directions, random sizes,
// iovec layouts, offsets and DUNs; and the pool follows the key's lifetime (an
// evicted or reprogrammed slot's key is gone from the pool threads too).
#include "ice/crypt_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "ice/engine.h"
#include "ice_test_util.h"

namespace iceblk::ice {
namespace {

using test::all_modes;
using test::make_key;
using test::pattern;

unsigned seed() {
  if (const char* s = std::getenv("ICEBLK_PROPERTY_SEED"))
    return static_cast<unsigned>(std::strtoul(s, nullptr, 0));
  return std::random_device{}();
}

std::unique_ptr<CryptPool> make_pool(unsigned threads, bool caller_helps) {
  auto p = CryptPool::create({threads, caller_helps});
  if (!p) {
    ADD_FAILURE() << p.error().to_string();
    std::abort();
  }
  return std::move(*p);
}

// `bytes` cut into iovecs at random places (some tiny, some straddling data units).
std::vector<iovec> random_iovecs(std::vector<uint8_t>& bytes, std::mt19937& rng) {
  std::vector<iovec> v;
  size_t off = 0;
  while (off < bytes.size()) {
    size_t n = bytes.size() - off;
    switch (rng() % 4) {
      case 0:
        n = std::min<size_t>(n, 1 + rng() % 31);
        break;
      case 1:
        n = std::min<size_t>(n, 1 + rng() % 8192);
        break;
      case 2:
        n = std::min<size_t>(n, 1 + rng() % (96 * 1024));
        break;
      default:
        break;  // the rest in one
    }
    v.push_back({bytes.data() + off, n});
    off += n;
  }
  return v;
}

TEST(CryptPool, RejectsThreadCountsOutsideTheBound) {
  EXPECT_EQ(CryptPool::create({0}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(CryptPool::create({kMaxCryptThreads + 1}).error().code, Errc::kInvalidArgument);
  auto p = CryptPool::create({kMaxCryptThreads});
  ASSERT_TRUE(p);
  EXPECT_EQ((*p)->threads(), kMaxCryptThreads);
}

// Property: pool.crypt == CryptContext::crypt, byte for byte.
TEST(CryptPool, SplitCallsGiveTheBytesOfOneContextInEveryMode) {
  const unsigned s = seed();
  SCOPED_TRACE(::testing::Message() << "ICEBLK_PROPERTY_SEED=" << s);
  std::mt19937 rng(s);
  // 3 threads that crypt every piece (the caller only waits); 1 thread, as iceblkd.
  auto waiting = make_pool(3, false);
  auto normal = make_pool(1, true);
  CryptContext own, ref;
  uint64_t split_calls = 0;
  for (int iter = 0; iter < 120 && !HasFailure(); ++iter) {
    const uint32_t dus = 512u << (rng() % 6);  // 512 .. 16 KiB
    const auto modes = all_modes(dus);
    const CryptoMode mode = modes[rng() % modes.size()];
    ProgrammedKey key(make_key(mode, static_cast<uint8_t>(rng())), 1);
    const Direction dir = rng() % 2 == 0 ? Direction::kEncrypt : Direction::kDecrypt;
    CryptPool& pool = rng() % 2 == 0 ? *waiting : *normal;
    // Mostly above the threshold (up to 320 KiB), sometimes below it.
    const uint64_t max_units = std::max<uint64_t>(1, (rng() % 4 == 0 ? 96 : 320) * 1024 / dus);
    const uint64_t units = 1 + rng() % max_units;
    const uint64_t len = units * dus;
    uint64_t dun = (uint64_t{rng()} << 32) | rng();
    if (rng() % 6 == 0) dun = ~uint64_t{0} - (units - 1);  // the last DUN is 2^64 - 1
    if (dun > ~uint64_t{0} - (units - 1)) dun = ~uint64_t{0} - (units - 1);
    const bool in_place = rng() % 3 == 0;
    SCOPED_TRACE(::testing::Message()
                 << "iteration " << iter << ": " << algorithm_name(mode.alg, mode.key_size)
                 << " dus " << dus << " len " << len << " dun " << dun
                 << (dir == Direction::kEncrypt ? " encrypt" : " decrypt")
                 << (in_place ? " in place" : ""));
    // Source and destination lists with slack in front (the offsets skip it).
    const uint64_t src_off = rng() % 3 == 0 ? 0 : rng() % 5000,
                   dst_off = rng() % 3 == 0 ? 0 : rng() % 5000;
    std::vector<uint8_t> src = pattern(src_off + len, static_cast<uint8_t>(rng()));
    std::vector<uint8_t> dst_pool(dst_off + len, 0xEE), dst_ref(dst_off + len, 0xEE);
    std::vector<uint8_t> src_copy = src;
    const auto src_iov = random_iovecs(src, rng);
    auto dst_iov_pool = random_iovecs(dst_pool, rng);
    // The reference gets the same layout over its own bytes.
    std::vector<iovec> dst_iov_ref, src_iov_ref;
    for (const iovec& v : dst_iov_pool) {
      dst_iov_ref.push_back(
          {dst_ref.data() + (static_cast<uint8_t*>(v.iov_base) - dst_pool.data()), v.iov_len});
    }
    for (const iovec& v : src_iov) {
      src_iov_ref.push_back(
          {src_copy.data() + (static_cast<uint8_t*>(v.iov_base) - src.data()), v.iov_len});
    }
    const uint64_t before = pool.pieces_by_threads();
    if (in_place) {
      ASSERT_TRUE(pool.crypt(own, key, dir, Dun(dun), src_iov, src_off, src_iov, src_off, len));
      ASSERT_TRUE(ref.crypt(key, dir, Dun(dun), src_iov_ref, src_off, src_iov_ref, src_off, len));
      EXPECT_TRUE(src == src_copy) << "in place: the pool's bytes differ from one context's";
    } else {
      ASSERT_TRUE(
          pool.crypt(own, key, dir, Dun(dun), src_iov, src_off, dst_iov_pool, dst_off, len));
      ASSERT_TRUE(ref.crypt(key, dir, Dun(dun), src_iov_ref, src_off, dst_iov_ref, dst_off, len));
      EXPECT_TRUE(dst_pool == dst_ref) << "the pool's bytes differ from one context's";
      EXPECT_TRUE(src == src_copy) << "out of place: the source changed";
    }
    const uint64_t piece = std::max<uint64_t>(dus, kCryptPieceBytes / dus * dus);
    const uint64_t pieces = (len + piece - 1) / piece;
    const bool split = len >= kParallelCryptMinBytes && pieces >= 2;
    if (split) ++split_calls;
    if (!split) {
      EXPECT_EQ(pool.pieces_by_threads(), before) << "a call below the threshold was split";
    } else if (&pool == waiting.get()) {
      EXPECT_EQ(pool.pieces_by_threads() - before, pieces)
          << "the threads did not crypt every piece";
    }
  }
  ASSERT_GT(split_calls, 20u);
  EXPECT_GT(waiting->pieces_by_threads(), split_calls);
}

TEST(CryptPool, ErrorsAreThoseOfOneContextAndNothingIsWritten) {
  auto pool = make_pool(2, false);
  CryptContext own, ref;
  ProgrammedKey key(make_key({Algorithm::kAesXts, KeySize::k256, 4096}, uint8_t{5}), 1);
  std::vector<uint8_t> src(256 * 1024, 0x11), dst(256 * 1024, 0x22);
  const iovec s{src.data(), src.size()}, d{dst.data(), dst.size()};
  const iovec short_dst{dst.data(), 128 * 1024};
  struct Case {
    const char* what;
    Dun first;
    iovec dst;
    uint64_t len;
  } cases[] = {
      {"misaligned", Dun(0), d, 128 * 1024 + 512},
      {"DUN overflow", Dun(~uint64_t{0} - 10), d, 128 * 1024},
      {"destination too short", Dun(0), short_dst, 192 * 1024},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto want = ref.crypt(key, Direction::kEncrypt, c.first, {&s, 1}, 0, {&c.dst, 1}, 0, c.len);
    auto got =
        pool->crypt(own, key, Direction::kEncrypt, c.first, {&s, 1}, 0, {&c.dst, 1}, 0, c.len);
    ASSERT_FALSE(want);
    ASSERT_FALSE(got);
    EXPECT_EQ(got.error().code, want.error().code);
    EXPECT_EQ(got.error().message, want.error().message);
    EXPECT_TRUE(std::all_of(dst.begin(), dst.end(), [](uint8_t b) { return b == 0x22; }))
        << "output written";
  }
}

// Keyslot eviction: the pool keeps nothing of a key. After the slot is evicted and
// reprogrammed, the old key's ProgrammedKey (with the keyed contexts every piece
// used) is gone, and the pool crypts with the new key only.
TEST(CryptPool, EvictedKeyIsGoneFromThePoolThreads) {
  auto e = Engine::create({});
  ASSERT_TRUE(e);
  auto& engine = **e;
  auto pool = make_pool(2, false);
  CryptContext own, ref;
  const CryptoMode mode{Algorithm::kAesXts, KeySize::k256, 4096};
  const PhysSlot slot(3);
  const std::vector<uint8_t> plain = pattern(256 * 1024, 9);
  auto crypt = [&](const ProgrammedKey& k, Direction dir, std::span<const uint8_t> in) {
    std::vector<uint8_t> out(in.size());
    const iovec s{const_cast<uint8_t*>(in.data()), in.size()}, d{out.data(), out.size()};
    EXPECT_TRUE(pool->crypt(own, k, dir, Dun(40), {&s, 1}, 0, {&d, 1}, 0, in.size()));
    return out;
  };

  ASSERT_TRUE(engine.program(slot, make_key(mode, uint8_t{1})));
  std::weak_ptr<const ProgrammedKey> old_key;
  std::vector<uint8_t> old_ct;
  {
    auto a = engine.lookup(slot);
    ASSERT_TRUE(a);
    old_key = *a;
    const uint64_t before = pool->pieces_by_threads();
    old_ct = crypt(**a, Direction::kEncrypt, plain);
    EXPECT_TRUE(crypt(**a, Direction::kDecrypt, old_ct) == plain);
    EXPECT_EQ(pool->pieces_by_threads() - before, 2 * plain.size() / kCryptPieceBytes)
        << "the pool's threads did not crypt every piece";
  }
  ASSERT_TRUE(engine.evict(slot));
  // No pool thread holds the key or a context keyed with it.
  EXPECT_TRUE(old_key.expired()) << "the evicted key is still referenced";
  EXPECT_EQ(engine.lookup(slot).error().code, Errc::kNotFound);

  ASSERT_TRUE(engine.program(slot, make_key(mode, uint8_t{2})));
  auto b = engine.lookup(slot);
  ASSERT_TRUE(b);
  // The new key's bytes, from every piece: the old key's ciphertext does not decrypt.
  EXPECT_FALSE(crypt(**b, Direction::kDecrypt, old_ct) == plain)
      << "decrypted with the evicted key";
  std::vector<uint8_t> want(plain.size());
  ASSERT_TRUE(ref.crypt(**b, Direction::kEncrypt, Dun(40), plain, want));
  const auto new_ct = crypt(**b, Direction::kEncrypt, plain);
  EXPECT_TRUE(new_ct == want);
  EXPECT_FALSE(new_ct == old_ct);
  // Piece by piece (each crypted by some pool thread): none equals the old key's.
  for (size_t off = 0; off < plain.size(); off += kCryptPieceBytes) {
    EXPECT_FALSE(std::equal(new_ct.begin() + off, new_ct.begin() + off + kCryptPieceBytes,
                            old_ct.begin() + off))
        << "bytes at " << off << " crypted with the old key";
  }
}

// Several callers at once (queue workers of several exports) share the threads: every
// result is still right, whoever crypted which piece (TSan: the hand-offs).
TEST(CryptPool, ConcurrentCallersShareThePool) {
  auto pool = make_pool(2, true);
  ProgrammedKey key(make_key({Algorithm::kAesXts, KeySize::k128, 4096}, uint8_t{3}), 1);
  const std::vector<uint8_t> plain = pattern(128 * 1024, 4);
  std::vector<uint8_t> want(plain.size());
  {
    CryptContext ref;
    ASSERT_TRUE(ref.crypt(key, Direction::kEncrypt, Dun(7), plain, want));
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&] {
      CryptContext own;
      std::vector<uint8_t> out(plain.size());
      for (int i = 0; i < 200; ++i) {
        const iovec s{const_cast<uint8_t*>(plain.data()), plain.size()}, d{out.data(), out.size()};
        if (!pool->crypt(own, key, Direction::kEncrypt, Dun(7), {&s, 1}, 0, {&d, 1}, 0,
                         plain.size()) ||
            out != want) {
          bad.fetch_add(1);
        }
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(bad.load(), 0);
  // After stop() the pool still crypts, on the caller alone.
  pool->stop();
  const uint64_t pieces = pool->pieces_by_threads();
  CryptContext own;
  std::vector<uint8_t> out(plain.size());
  const iovec s{const_cast<uint8_t*>(plain.data()), plain.size()}, d{out.data(), out.size()};
  ASSERT_TRUE(
      pool->crypt(own, key, Direction::kEncrypt, Dun(7), {&s, 1}, 0, {&d, 1}, 0, plain.size()));
  EXPECT_TRUE(out == want);
  EXPECT_EQ(pool->pieces_by_threads(), pieces);
}

}  // namespace
}  // namespace iceblk::ice
