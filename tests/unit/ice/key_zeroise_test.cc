// Eviction leaves no key bytes behind, checked end to end: this binary routes every
// C++ heap allocation (operator new/delete) and every OpenSSL allocation through a
// tracking allocator. While tracking is on, freed blocks are quarantined (kept
// allocated, never reused) so the test can scan them - reading memory that was
// never released, so this stays clean under ASan. Every block allocated during the
// test, live or freed, must be free of the key material once the key is evicted
// and the last reference dropped. Positive controls show the scan finds the key
// while it is programmed.
#include <gtest/gtest.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "ice/crypt_pool.h"
#include "ice/engine.h"
#include "ice_test_util.h"

namespace {

struct alignas(16) Header {
  size_t size;
  Header* prev;
  Header* next;
  bool tracked;
  bool freed;
};

std::mutex& tracker_mutex() {
  static std::mutex mu;  // constant-initialised, no allocation
  return mu;
}
bool g_tracking = false;
Header g_list{0, &g_list, &g_list, false, false};

void* tracked_alloc(size_t n) {
  auto* h = static_cast<Header*>(std::malloc(sizeof(Header) + (n == 0 ? 1 : n)));
  if (h == nullptr) return nullptr;
  h->size = n;
  h->tracked = false;
  h->freed = false;
  std::lock_guard lock(tracker_mutex());
  if (g_tracking) {
    h->tracked = true;
    h->next = &g_list;
    h->prev = g_list.prev;
    g_list.prev->next = h;
    g_list.prev = h;
  }
  return h + 1;
}

void tracked_free(void* p) {
  if (p == nullptr) return;
  Header* h = static_cast<Header*>(p) - 1;
  {
    std::lock_guard lock(tracker_mutex());
    if (h->tracked) {  // quarantine: released by stop_tracking()
      h->freed = true;
      return;
    }
  }
  std::free(h);
}

void* ossl_malloc(size_t n, const char*, int) { return tracked_alloc(n); }
void ossl_free(void* p, const char*, int) { tracked_free(p); }
void* ossl_realloc(void* p, size_t n, const char*, int) {
  if (p == nullptr) return tracked_alloc(n);
  if (n == 0) {
    tracked_free(p);
    return nullptr;
  }
  void* q = tracked_alloc(n);
  if (q == nullptr) return nullptr;
  const size_t old = (static_cast<Header*>(p) - 1)->size;
  std::memcpy(q, p, old < n ? old : n);
  tracked_free(p);
  return q;
}

// Must run before OpenSSL allocates anything (it refuses afterwards).
const bool g_openssl_hooked = CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free) == 1;

void start_tracking() {
  std::lock_guard lock(tracker_mutex());
  g_tracking = true;
}

// Untrack everything; free the quarantined blocks.
void stop_tracking() {
  Header* to_free = nullptr;
  {
    std::lock_guard lock(tracker_mutex());
    g_tracking = false;
    Header* h = g_list.next;
    while (h != &g_list) {
      Header* next = h->next;
      h->tracked = false;
      if (h->freed) {
        h->next = to_free;  // reuse the link for the free list
        to_free = h;
      }
      h = next;
    }
    g_list.next = g_list.prev = &g_list;
  }
  while (to_free != nullptr) {
    Header* next = to_free->next;
    std::free(to_free);
    to_free = next;
  }
}

// Number of tracked blocks (live or quarantined) holding any 8-byte window of `secret`.
int blocks_containing(std::span<const uint8_t> secret) {
  std::lock_guard lock(tracker_mutex());
  int hits = 0;
  for (Header* h = g_list.next; h != &g_list; h = h->next) {
    const auto* data = reinterpret_cast<const uint8_t*>(h + 1);
    bool hit = false;
    for (size_t off = 0; off + 8 <= secret.size() && !hit; off += 8) {
      hit = memmem(data, h->size, secret.data() + off, 8) != nullptr;
    }
    hits += hit ? 1 : 0;
  }
  return hits;
}

}  // namespace

void* operator new(size_t n) {
  if (void* p = tracked_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  if (void* p = tracked_alloc(n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { tracked_free(p); }
void operator delete[](void* p) noexcept { tracked_free(p); }
void operator delete(void* p, size_t) noexcept { tracked_free(p); }
void operator delete[](void* p, size_t) noexcept { tracked_free(p); }

namespace iceblk::ice {
namespace {

class KeyZeroise : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(g_openssl_hooked) << "OpenSSL allocated before the test could hook it";
    // Warm up OpenSSL (cipher fetches, error tables) outside the tracked window.
    ProgrammedKey warm(test::make_key(kXts, uint8_t{99}), 0);
    ProgrammedKey warm2(test::make_key(kEssiv, uint8_t{98}), 0);
    CryptContext ctx;
    std::vector<uint8_t> buf(512);
    ASSERT_TRUE(ctx.crypt(warm, Direction::kEncrypt, Dun(0), buf));
    ASSERT_TRUE(ctx.crypt(warm2, Direction::kDecrypt, Dun(0), buf));
    auto e = Engine::create({});
    ASSERT_TRUE(e);
    engine_ = std::move(*e);
    // Key bytes live on the stack only (not scanned): distinctive, non-repeating.
    auto bytes = test::pattern(64 + 16, 77);
    std::memcpy(xts_key_, bytes.data(), 64);
    std::memcpy(essiv_key_, bytes.data() + 64, 16);
    unsigned len = 0;
    ASSERT_EQ(EVP_Digest(essiv_key_, 16, essiv_salt_, &len, EVP_sha256(), nullptr), 1);
    start_tracking();
  }
  void TearDown() override { stop_tracking(); }

  void use_slot(PhysSlot s) {
    CryptContext ctx;
    std::vector<uint8_t> buf(2 * 512, 0x11);
    ASSERT_TRUE(engine_->crypt(ctx, s, Direction::kEncrypt, Dun(7), buf));
    ASSERT_TRUE(engine_->crypt(ctx, s, Direction::kDecrypt, Dun(7), buf));
  }

  static constexpr CryptoMode kXts{Algorithm::kAesXts, KeySize::k256, 512};
  static constexpr CryptoMode kEssiv{Algorithm::kEssivAesCbc, KeySize::k128, 512};
  std::unique_ptr<Engine> engine_;
  uint8_t xts_key_[64];
  uint8_t essiv_key_[16];
  uint8_t essiv_salt_[32];  // SHA-256(essiv_key_)
};

TEST_F(KeyZeroise, ScannerSeesFreedBlocksAndSecretBytesWipes) {
  // Self-test of the harness: a block freed without wiping is still scanned...
  void* plain = ::operator new[](64);
  std::memcpy(plain, xts_key_, 64);
  asm volatile("" : : "r"(plain) : "memory");  // keep the store: the block "escapes"
  ::operator delete[](plain);
  EXPECT_EQ(blocks_containing(xts_key_), 1);
  stop_tracking();
  start_tracking();
  // ...while SecretBytes wipes before it frees.
  { SecretBytes s(std::span<const uint8_t>(xts_key_, 64)); }
  EXPECT_EQ(blocks_containing(xts_key_), 0);
}

TEST_F(KeyZeroise, EvictLeavesNoXtsKeyBytesIncludingKeySchedules) {
  ASSERT_TRUE(engine_->program(PhysSlot(3), test::make_key(kXts, xts_key_)));
  use_slot(PhysSlot(3));
  // Positive control: the key (its SecretBytes and the keyed cipher contexts) is found.
  const int live = blocks_containing(xts_key_);
  EXPECT_GE(live, 1);
  RecordProperty("blocks_with_key_before_evict", live);
  ASSERT_TRUE(engine_->evict(PhysSlot(3)));
  EXPECT_EQ(blocks_containing(xts_key_), 0);
}

TEST_F(KeyZeroise, EvictLeavesNoEssivKeyOrSalt) {
  ASSERT_TRUE(engine_->program(PhysSlot(4), test::make_key(kEssiv, essiv_key_)));
  use_slot(PhysSlot(4));
  EXPECT_GE(blocks_containing(essiv_key_), 1);
  EXPECT_GE(blocks_containing(essiv_salt_), 1);
  ASSERT_TRUE(engine_->evict(PhysSlot(4)));
  EXPECT_EQ(blocks_containing(essiv_key_), 0);
  EXPECT_EQ(blocks_containing(essiv_salt_), 0);
}

TEST_F(KeyZeroise, SnapshotKeepsKeyUntilLastReferenceThenZeroised) {
  ASSERT_TRUE(engine_->program(PhysSlot(5), test::make_key(kXts, xts_key_)));
  auto snap = engine_->lookup(PhysSlot(5));
  ASSERT_TRUE(snap);
  use_slot(PhysSlot(5));
  ASSERT_TRUE(engine_->evict(PhysSlot(5)));
  EXPECT_GE(blocks_containing(xts_key_), 1);  // an in-flight request still holds it
  snap->reset();
  EXPECT_EQ(blocks_containing(xts_key_), 0);
}

TEST_F(KeyZeroise, ReprogramAndRemoveVmZeroiseTheOldKey) {
  auto vm = engine_->add_vm("vm", {8, 4});
  ASSERT_TRUE(vm);
  ASSERT_TRUE(engine_->program(PhysSlot(9), test::make_key(kXts, xts_key_)));
  use_slot(PhysSlot(9));
  ASSERT_TRUE(engine_->program(PhysSlot(9), test::make_key(kEssiv, essiv_key_)));
  use_slot(PhysSlot(9));
  EXPECT_EQ(blocks_containing(xts_key_), 0);
  EXPECT_GE(blocks_containing(essiv_key_), 1);
  engine_->remove_vm(*vm);
  EXPECT_EQ(blocks_containing(essiv_key_), 0);
}

// Crypto threads: the pool's threads crypt pieces with keyed contexts of the key's
// own cache, so eviction wipes them too; nothing keyed lingers in a pool thread.
TEST_F(KeyZeroise, EvictLeavesNoKeyBytesInTheCryptoThreads) {
  auto pool = CryptPool::create({2, /*caller_helps=*/false});
  ASSERT_TRUE(pool);
  ASSERT_TRUE(engine_->program(PhysSlot(6), test::make_key(kXts, xts_key_)));
  {
    auto k = engine_->lookup(PhysSlot(6));
    ASSERT_TRUE(k);
    CryptContext own;
    std::vector<uint8_t> buf(256 * 1024, 0x33);
    const iovec v{buf.data(), buf.size()};
    for (Direction dir : {Direction::kEncrypt, Direction::kDecrypt}) {
      ASSERT_TRUE((*pool)->crypt(own, **k, dir, Dun(1), {&v, 1}, 0, {&v, 1}, 0, buf.size()));
    }
    EXPECT_EQ((*pool)->pieces_by_threads(), 2 * buf.size() / kCryptPieceBytes);
    // Positive control: the key and its (now several) keyed contexts are found.
    EXPECT_GE(blocks_containing(xts_key_), 3);
  }
  ASSERT_TRUE(engine_->evict(PhysSlot(6)));
  EXPECT_EQ(blocks_containing(xts_key_), 0);
}

}  // namespace
}  // namespace iceblk::ice
