// Bounded bounce-buffer memory (blk/buffer_pool.h, issue 14 part 2): a queue's
// buffers are fixed at set-up; encrypted requests beyond them wait and complete
// correctly; the engine-wide budget refuses a queue it cannot give one chunk.
#include "blk/buffer_pool.h"

#include <gtest/gtest.h>

#include "blk_fixture.h"
#include "ice/key_blob.h"
#include "support/reference_cipher.h"

namespace iceblk::blk::testing {
namespace {

TEST(BouncePool, SplitsTheShareAndNeverHandsOutMore) {
  auto p = BouncePool::create(kDefaultExportBufferMemory, 256);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_LE(p->bytes(), kDefaultExportBufferMemory);
  EXPECT_EQ(p->small_count(), kDefaultExportBufferMemory / 4 / kSmallBounce);
  EXPECT_EQ(p->large_count(), (kDefaultExportBufferMemory * 3 / 4) / kCryptChunk);
  std::vector<uint8_t*> got;
  bool small = false;
  while (uint8_t* b = p->take(kCryptChunk, small)) {
    EXPECT_FALSE(small);
    got.push_back(b);
  }
  EXPECT_EQ(got.size(), p->large_count());
  p->give(got.back(), false);
  EXPECT_EQ(p->take(1 << 20, small), got.back());

  // The minimum: one chunk, no small buffers; below it, refused.
  auto one = BouncePool::create(kMinQueueBufferMemory, 256);
  ASSERT_TRUE(one);
  EXPECT_EQ(one->large_count(), 1u);
  EXPECT_EQ(one->small_count(), 0u);
  EXPECT_FALSE(one->uses_small(4096));
  EXPECT_FALSE(BouncePool::create(kMinQueueBufferMemory - 1, 256));
}

TEST(BufferBudget, ReservesWhatIsLeftDownToTheMinimum) {
  BufferBudget b(3 * kCryptChunk);
  EXPECT_EQ(*b.reserve(2 * kCryptChunk, kCryptChunk), 2 * kCryptChunk);
  EXPECT_EQ(*b.reserve(2 * kCryptChunk, kCryptChunk), kCryptChunk);  // only one left
  auto r = b.reserve(kCryptChunk, kCryptChunk);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("--engine-buffer-memory"), std::string::npos)
      << r.error().message;
  b.release(kCryptChunk);
  EXPECT_TRUE(b.reserve(kCryptChunk, kCryptChunk));
  EXPECT_EQ(b.reserved(), b.cap());
}

class BoundedBuffers : public ::testing::Test {
 protected:
  void make(uint64_t cap, std::shared_ptr<BufferBudget> budget = nullptr) {
    DeviceSetup s;
    s.backend = BackendKind::kFileUring;  // asynchronous: requests really overlap
    s.ice = true;
    s.size = 8 << 20;
    s.ring_size = 64;
    s.driver_mem = 32 << 20;
    s.max_buffer_memory = cap;
    s.buffer_budget = std::move(budget);
    h_ = std::make_unique<BlkHarness>(s);
    h_->init();
  }
  void program_xts(const std::vector<uint8_t>& key) {
    ice::KeyBlobWire b{};
    b.alg = 0;
    b.data_unit_size_exp = 3;  // 4 KiB
    b.key_size = 3;            // 256
    b.key_len = 64;
    std::memcpy(b.key, key.data(), key.size());
    ASSERT_EQ(h_->simple(h_->header(kTypeIceProgramKey, 0, 0), as_bytes(b), 0).status, kStatusOk);
  }
  std::unique_ptr<BlkHarness> h_;
};

// One chunk for the whole queue, 12 encrypted 512 KiB writes (two chunks each) and
// then 12 reads, all posted at once: they take turns on the one buffer and every
// one completes with the right bytes.
TEST_F(BoundedBuffers, RequestsBeyondTheCapWaitAndComplete) {
  make(kMinQueueBufferMemory);
  ASSERT_EQ(h_->proc_->buffers().large_count(), 1u);
  ASSERT_EQ(h_->proc_->buffers().small_count(), 0u);
  const auto key = random_bytes(64, 5);
  program_xts(key);
  constexpr unsigned kN = 12;
  constexpr uint32_t kLen = 512 * 1024;
  std::vector<std::vector<uint8_t>> data;
  std::vector<BlkHarness::Pending> pending;
  for (unsigned i = 0; i < kN; ++i) {
    data.push_back(random_bytes(kLen, 100 + i));
    pending.push_back(
        h_->start({Piece::out(h_->header(kTypeOut, uint64_t{i} * kLen / 512, 0, 1, 1000 + i * 128)),
                   Piece::out(data.back()), Piece::in(1)}));
  }
  for (auto& p : pending) EXPECT_EQ(h_->wait(p).status, kStatusOk);
  EXPECT_GT(h_->proc_->buffer_waits(), 0u)
      << "the requests never had to wait: the test did not reach the cap";
  const auto m = h_->medium();
  for (unsigned i = 0; i < kN; ++i) {
    const auto want = iceblk::test::reference_xts(key, 1000 + i * 128, data[i], 4096);
    EXPECT_TRUE(std::equal(want.begin(), want.end(), m.begin() + i * kLen)) << "request " << i;
  }
  const uint64_t waits = h_->proc_->buffer_waits();
  pending.clear();
  for (unsigned i = 0; i < kN; ++i) {
    pending.push_back(
        h_->start({Piece::out(h_->header(kTypeIn, uint64_t{i} * kLen / 512, 0, 1, 1000 + i * 128)),
                   Piece::in(kLen), Piece::in(1)}));
  }
  for (unsigned i = 0; i < kN; ++i) {
    auto c = h_->wait(pending[i]);
    EXPECT_EQ(c.status, kStatusOk);
    EXPECT_TRUE(c.in_bufs[0] == data[i]) << "read " << i;
  }
  EXPECT_GT(h_->proc_->buffer_waits(), waits);
  EXPECT_EQ(h_->proc_->in_flight(), 0u);
}

// The engine-wide budget: a second queue that cannot get one chunk does not start;
// once the first is gone, it does.
TEST_F(BoundedBuffers, EngineBudgetRefusesAQueueItCannotServe) {
  auto budget = std::make_shared<BufferBudget>(kCryptChunk + kCryptChunk / 2);
  make(kCryptChunk, budget);
  EXPECT_EQ(budget->reserved(), kCryptChunk);
  auto second = h_->dev_->make_queue_processor(0);
  ASSERT_FALSE(second);
  EXPECT_NE(second.error().message.find("engine buffer memory exhausted"), std::string::npos)
      << second.error().message;
  h_->proc_.reset();
  EXPECT_EQ(budget->reserved(), 0u);
  second = h_->dev_->make_queue_processor(0);
  ASSERT_TRUE(second) << second.error().to_string();
  EXPECT_EQ(budget->reserved(), kCryptChunk);
}

TEST(BoundedBuffersConfig, AnExportCapBelowOneChunkPerQueueIsRefused) {
  auto b = backend::make_memory_backend(1 << 20);
  ASSERT_TRUE(b);
  BlkDeviceConfig cfg;
  cfg.num_queues = 4;
  cfg.max_buffer_memory = 4 * kCryptChunk - 1;
  auto d = BlkDevice::create(cfg, std::move(*b));
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find("max_buffer_memory"), std::string::npos) << d.error().message;
}

}  // namespace
}  // namespace iceblk::blk::testing
