// Property test of the encrypted data path: random request sizes, offsets, DUNs,
// data unit and key sizes, and random descriptor layouts (data split at odd places
// over many descriptors, the header sharing a descriptor with data, the status byte
// sharing one with the last data bytes), through the device (parser, queue
// processor, engine, backend), compared with the reference XTS of
// tests/support/reference_cipher (OpenSSL EVP, independent of src/ice).
//
// Seeded: ICEBLK_PROPERTY_SEED=<n> replays a run; every failure prints the seed.
#include <cstdlib>
#include <random>

#include "blk_fixture.h"
#include "ice/key_blob.h"
#include "support/reference_cipher.h"

namespace iceblk::blk::testing {
namespace {

using iceblk::test::reference_xts;

constexpr uint64_t kMedium = 4 << 20;

unsigned property_seed() {
  if (const char* s = std::getenv("ICEBLK_PROPERTY_SEED"))
    return static_cast<unsigned>(std::strtoul(s, nullptr, 0));
  return std::random_device{}();
}

// Cuts `n` bytes into at most `max_pieces` lengths at random places, some tiny.
std::vector<size_t> random_cuts(size_t n, size_t max_pieces, std::mt19937& rng) {
  std::vector<size_t> cuts;
  size_t left = n;
  while (left > 0) {
    size_t piece = left;
    if (cuts.size() + 1 < max_pieces) {
      switch (rng() % 4) {
        case 0:
          piece = 1 + rng() % 15;
          break;  // a few bytes
        case 1:
          piece = 1 + rng() % 4096;
          break;  // inside a page
        case 2:
          piece = 4096 - rng() % 3;
          break;  // just under / at a page
        default:
          piece = 1 + rng() % (64 * 1024);
          break;  // large
      }
    }
    piece = std::min(piece, left);
    cuts.push_back(piece);
    left -= piece;
  }
  return cuts;
}

// A backend, and the crypto threads splitting large chunks (0: none).
struct PropertyParam {
  BackendKind backend;
  unsigned crypt_threads;
};

class CryptProperty : public ::testing::TestWithParam<PropertyParam> {
 protected:
  void SetUp() override {
    DeviceSetup s;
    s.backend = GetParam().backend;
    s.crypt_threads = GetParam().crypt_threads;
    s.ice = true;
    s.size = kMedium;
    s.ring_size = 128;
    s.driver_mem = 16 << 20;
    h_ = std::make_unique<BlkHarness>(s);
    h_->init();
  }

  void program(uint8_t slot, uint32_t dus, const std::vector<uint8_t>& key) {
    ice::KeyBlobWire b{};
    b.alg = 0;  // AES-XTS
    uint8_t exp = 0;
    while ((512u << exp) != dus) ++exp;
    b.data_unit_size_exp = exp;
    b.key_size = key.size() == 64 ? 3 : 1;
    b.key_len = static_cast<uint16_t>(key.size());
    std::memcpy(b.key, key.data(), key.size());
    auto c = h_->simple(h_->header(kTypeIceProgramKey, 0, slot), as_bytes(b), 0);
    ASSERT_EQ(c.status, kStatusOk);
  }

  // An OUT request: header (sometimes sharing its descriptor with the first data
  // bytes), the data cut at random places, the status byte.
  Completion write(const std::vector<uint8_t>& hdr, const std::vector<uint8_t>& data,
                   std::mt19937& rng) {
    std::vector<Piece> p;
    size_t off = 0;
    if (rng() % 3 == 0) {
      off = std::min<size_t>(data.size(), rng() % 700);
      p.push_back(
          Piece::out(concat(hdr, {data.begin(), data.begin() + static_cast<ptrdiff_t>(off)})));
    } else {
      p.push_back(Piece::out(hdr));
    }
    for (size_t n : random_cuts(data.size() - off, 48, rng)) {
      p.push_back(Piece::out({data.begin() + static_cast<ptrdiff_t>(off),
                              data.begin() + static_cast<ptrdiff_t>(off + n)}));
      off += n;
    }
    p.push_back(Piece::in(1));
    return h_->run(p, p.size() > 8);
  }

  // An IN request: data buffers cut at random places, the last one sometimes also
  // holding the status byte.
  Completion read(const std::vector<uint8_t>& hdr, size_t len, std::mt19937& rng) {
    std::vector<Piece> p{Piece::out(hdr)};
    auto cuts = random_cuts(len, 48, rng);
    const bool shared_status = rng() % 2 == 0;
    if (shared_status) cuts.back() += 1;
    for (size_t n : cuts) p.push_back(Piece::in(static_cast<uint32_t>(n)));
    if (!shared_status) p.push_back(Piece::in(1));
    return h_->run(p, p.size() > 8);
  }

  std::unique_ptr<BlkHarness> h_;
};

TEST_P(CryptProperty, RandomRequestsMatchTheReferenceXts) {
  const unsigned seed = property_seed();
  SCOPED_TRACE(::testing::Message() << "ICEBLK_PROPERTY_SEED=" << seed);
  std::mt19937 rng(seed);
  for (int iter = 0; iter < 40 && !HasFailure(); ++iter) {
    SCOPED_TRACE(::testing::Message() << "iteration " << iter);
    const uint32_t dus = 512u << (rng() % 5);  // 512 .. 8 KiB
    const bool k256 = rng() % 2 == 0;
    const auto key = random_bytes(k256 ? 64 : 32, static_cast<unsigned>(rng()));
    const uint8_t slot = static_cast<uint8_t>(rng() % 4);
    program(slot, dus, key);
    if (HasFatalFailure()) return;

    // Up to 600 KiB: more than two kCryptChunk chunks.
    const uint64_t units = 1 + rng() % std::max<uint64_t>(1, 600 * 1024 / dus);
    const uint64_t len = units * dus;
    const uint64_t off = (rng() % ((kMedium - len) / dus + 1)) * dus;
    uint64_t dun = (uint64_t{rng()} << 32) | rng();
    if (rng() % 8 == 0) dun = ~uint64_t{0} - (units - 1);  // the last DUN is 2^64 - 1
    if (dun > ~uint64_t{0} - (units - 1)) dun = ~uint64_t{0} - (units - 1);
    const auto plain = random_bytes(len, static_cast<unsigned>(rng()));
    const auto want_ct = reference_xts(key, dun, plain, dus);

    // Encrypted write: the medium holds exactly the reference ciphertext, and the
    // driver's buffers are unchanged.
    auto w = write(h_->header(kTypeOut, off / 512, slot, 1, dun), plain, rng);
    ASSERT_EQ(w.status, kStatusOk);
    std::vector<uint8_t> sent;
    for (size_t i = 1; i < w.out_bufs.size(); ++i)
      sent.insert(sent.end(), w.out_bufs[i].begin(), w.out_bufs[i].end());
    if (w.out_bufs[0].size() > kIceHeaderSize) {
      sent.insert(sent.begin(), w.out_bufs[0].begin() + kIceHeaderSize, w.out_bufs[0].end());
    }
    EXPECT_TRUE(sent == plain) << "the driver's OUT buffers were modified";
    const auto m = h_->medium();
    EXPECT_TRUE(std::equal(want_ct.begin(), want_ct.end(), m.begin() + static_cast<ptrdiff_t>(off)))
        << "ciphertext on the medium differs from the reference XTS (off " << off << ", len " << len
        << ", dus " << dus << ")";

    // Encrypted read with another layout gives the plaintext back.
    auto r = read(h_->header(kTypeIn, off / 512, slot, 1, dun), len, rng);
    ASSERT_EQ(r.status, kStatusOk);
    EXPECT_EQ(r.used_len, len + 1);
    EXPECT_TRUE(r.in_data() == plain) << "decrypted read differs";

    // Independent decrypt check: bytes written in the clear, read encrypted, equal
    // the reference XTS decryption of them.
    const auto clear = random_bytes(len, static_cast<unsigned>(rng()));
    auto wc = write(h_->header(kTypeOut, off / 512), clear, rng);
    ASSERT_EQ(wc.status, kStatusOk);
    auto rc = read(h_->header(kTypeIn, off / 512, slot, 1, dun), len, rng);
    ASSERT_EQ(rc.status, kStatusOk);
    EXPECT_TRUE(rc.in_data() == reference_xts(key, dun, clear, dus, false))
        << "decryption differs from the reference";
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CryptProperty,
                         ::testing::Values(PropertyParam{BackendKind::kMemory, 0},
                                           PropertyParam{BackendKind::kFileUring, 0},
                                           PropertyParam{BackendKind::kMemory, 2}),
                         [](const auto& p) {
                           return backend_name(p.param.backend) +
                                  (p.param.crypt_threads > 0
                                       ? "_CryptoThreads" + std::to_string(p.param.crypt_threads)
                                       : std::string());
                         });

}  // namespace
}  // namespace iceblk::blk::testing
