// BlockBackend tests, run against every backend: memory, file (sync), file (io_uring).
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "backend/block_backend.h"
#include "support/alloc_hook.h"
#include "support/pattern.h"
#include "support/backend_kind.h"
#include "support/temp_dir.h"

namespace iceblk::backend {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kSize = 1 << 20;

// A temporary directory for image files (removed with its contents).
struct TempDir {
  test::TempDir dir{"iceblk-backend"};
  fs::path path{dir.path()};
};

using Kind = test::BackendKind;
using test::backend_name;

// Submit one request and wait for its completion (through completion_fd for
// asynchronous queues, so the eventfd wiring is exercised too).
Result<uint64_t> run(IoQueue& q, IoRequest req) {
  std::optional<Result<uint64_t>> out;
  req.done = [&](Result<uint64_t> r) { out = std::move(r); };
  q.submit(std::move(req));
  q.flush_submissions();
  while (!out) {
    const int fd = q.completion_fd();
    if (fd < 0) {
      ADD_FAILURE() << "synchronous queue did not complete in submit()";
      return fail(Errc::kIo, "not completed");
    }
    pollfd p{fd, POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 5000), 1);
    uint64_t v;
    (void)!::read(fd, &v, sizeof v);
    q.reap();
  }
  EXPECT_EQ(q.in_flight(), 0u);
  return std::move(*out);
}

using test::pattern;

class BackendTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override { backend_ = open(false); }

  std::unique_ptr<BlockBackend> open(bool ro) {
    if (GetParam() == Kind::kMemory) {
      auto b = make_memory_backend(kSize, ro);
      EXPECT_TRUE(b) << b.error().to_string();
      return std::move(*b);
    }
    FileOptions o;
    o.path = (dir_.path / "disk.img").string();
    o.create = !ro;
    o.size = ro ? 0 : kSize;
    o.read_only = ro;
    o.engine = GetParam() == Kind::kFileSync ? FileEngine::kSync : FileEngine::kIoUring;
    auto b = open_file_backend(o);
    EXPECT_TRUE(b) << b.error().to_string();
    return b ? std::move(*b) : nullptr;
  }

  std::vector<uint8_t> read(IoQueue& q, uint64_t off, size_t len) {
    std::vector<uint8_t> out(len, 0xEE);
    IoRequest r{IoOp::kRead, off, len, {{out.data(), len}}, false, {}};
    auto res = run(q, std::move(r));
    EXPECT_TRUE(res) << res.error().to_string();
    return out;
  }

  Result<uint64_t> write(IoQueue& q, uint64_t off, std::vector<uint8_t>& data) {
    return run(q, IoRequest{IoOp::kWrite, off, data.size(), {{data.data(), data.size()}}, false, {}});
  }

  TempDir dir_;
  std::unique_ptr<BlockBackend> backend_;
};

TEST_P(BackendTest, ReportsSizeAndDescription) {
  ASSERT_TRUE(backend_);
  EXPECT_EQ(backend_->size_bytes(), kSize);
  EXPECT_FALSE(backend_->read_only());
  const auto d = backend_->describe();
  const char* want = GetParam() == Kind::kFileUring ? "io_uring" : GetParam() == Kind::kFileSync ? "sync" : "memory";
  EXPECT_NE(d.find(want), std::string::npos) << d;
}

TEST_P(BackendTest, WriteThenReadScatterGather) {
  auto q = backend_->make_queue(8);
  ASSERT_TRUE(q);
  auto data = pattern(3 * 4096, 1);
  // Three uneven iovecs.
  IoRequest w{IoOp::kWrite, 8192, data.size(),
              {{data.data(), 100}, {data.data() + 100, 5000}, {data.data() + 5100, data.size() - 5100}},
              false, {}};
  auto r = run(**q, std::move(w));
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(*r, data.size());
  EXPECT_EQ(read(**q, 8192, data.size()), data);
  // Neighbouring bytes untouched (zero).
  EXPECT_EQ(read(**q, 0, 8192), std::vector<uint8_t>(8192, 0));
  if (GetParam() == Kind::kMemory) {
    auto bytes = memory_backend_bytes(*backend_);
    ASSERT_EQ(bytes.size(), kSize);
    EXPECT_TRUE(std::equal(data.begin(), data.end(), bytes.begin() + 8192));
  } else {
    EXPECT_TRUE(memory_backend_bytes(*backend_).empty());
  }
}

TEST_P(BackendTest, MoreIovecsThanIovMax) {
  auto q = backend_->make_queue(4);
  ASSERT_TRUE(q);
  const size_t n = 2500;  // > IOV_MAX (1024): forces splitting / resubmission
  auto data = pattern(n * 8, 2);
  std::vector<iovec> iov;
  for (size_t i = 0; i < n; ++i) iov.push_back({data.data() + i * 8, 8});
  auto r = run(**q, IoRequest{IoOp::kWrite, 512, data.size(), iov, false, {}});
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(*r, data.size());
  std::vector<uint8_t> back(data.size());
  std::vector<iovec> riov;
  for (size_t i = 0; i < n; ++i) riov.push_back({back.data() + i * 8, 8});
  auto rr = run(**q, IoRequest{IoOp::kRead, 512, back.size(), riov, false, {}});
  ASSERT_TRUE(rr) << rr.error().to_string();
  EXPECT_EQ(back, data);
}

TEST_P(BackendTest, ManyRequestsInFlight) {
  auto q = backend_->make_queue(4);  // fewer ring entries than requests
  ASSERT_TRUE(q);
  std::vector<std::vector<uint8_t>> bufs;
  for (unsigned i = 0; i < 32; ++i) bufs.push_back(pattern(4096, 100 + i));
  unsigned completed = 0;
  for (unsigned i = 0; i < 32; ++i) {
    (*q)->submit(IoRequest{IoOp::kWrite, i * 4096ull, 4096, {{bufs[i].data(), 4096}}, false,
                           [&](Result<uint64_t> r) {
                             EXPECT_TRUE(r);
                             ++completed;
                           }});
  }
  (*q)->flush_submissions();
  (*q)->drain();
  EXPECT_EQ(completed, 32u);
  EXPECT_EQ((*q)->in_flight(), 0u);
  for (unsigned i = 0; i < 32; ++i) EXPECT_EQ(read(**q, i * 4096ull, 4096), bufs[i]) << i;
}

std::atomic<uint64_t> g_allocs{0};
void count_alloc() { g_allocs.fetch_add(1, std::memory_order_relaxed); }

// Issue 13 (zero allocations per request): a queue's first burst as deep as the queue
// allocates nothing. The requests are built beforehand; only submit, flush and drain
// are counted. (Under load a burst deeper than any warm-up can come at any time: the
// io_uring queue made its Ops on demand and failed blk_zero_alloc_test once so.)
TEST_P(BackendTest, FirstBurstAsDeepAsTheQueueAllocatesNothing) {
#ifdef ICEBLK_ALLOC_HOOK_SANITIZED
  GTEST_SKIP() << "the sanitizer owns malloc";
#endif
  constexpr unsigned kDepth = 64;
  auto q = backend_->make_queue(kDepth);
  ASSERT_TRUE(q);
  std::vector<std::vector<uint8_t>> bufs;
  for (unsigned i = 0; i < kDepth; ++i) bufs.push_back(pattern(4096, 300 + i));
  unsigned completed = 0;
  std::vector<IoRequest> reqs;
  for (unsigned i = 0; i < kDepth; ++i) {
    // Two uneven iovecs, as a data unit split across guest buffers.
    reqs.push_back(IoRequest{IoOp::kWrite, i * 4096ull, 4096,
                             {{bufs[i].data(), 1000}, {bufs[i].data() + 1000, 3096}}, false,
                             [&completed](Result<uint64_t> r) {
                               EXPECT_TRUE(r);
                               ++completed;
                             }});
  }
  g_allocs.store(0);
  testing::set_alloc_observer(count_alloc);
  for (auto& r : reqs) (*q)->submit(std::move(r));
  (*q)->flush_submissions();
  (*q)->drain();
  testing::set_alloc_observer(nullptr);
  EXPECT_EQ(g_allocs.load(), 0u) << "allocations for " << kDepth << " requests";
  EXPECT_EQ(completed, kDepth);
  for (unsigned i = 0; i < kDepth; ++i) EXPECT_EQ(read(**q, i * 4096ull, 4096), bufs[i]) << i;
}

TEST_P(BackendTest, FlushSucceeds) {
  auto q = backend_->make_queue(4);
  ASSERT_TRUE(q);
  auto data = pattern(512, 3);
  ASSERT_TRUE(write(**q, 0, data));
  auto r = run(**q, IoRequest{IoOp::kFlush, 0, 0, {}, false, {}});
  EXPECT_TRUE(r) << r.error().to_string();
}

TEST_P(BackendTest, DiscardAndWriteZeroesReadBackZeros) {
  auto q = backend_->make_queue(4);
  ASSERT_TRUE(q);
  EXPECT_TRUE(backend_->supports_discard());  // tmpfs / ext4 / memory all punch holes
  for (auto [op, unmap] : {std::pair{IoOp::kDiscard, false}, std::pair{IoOp::kWriteZeroes, false},
                           std::pair{IoOp::kWriteZeroes, true}}) {
    auto data = pattern(64 * 1024, 4);
    ASSERT_TRUE(write(**q, 0, data));
    auto r = run(**q, IoRequest{op, 4096, 8192, {}, unmap, {}});
    ASSERT_TRUE(r) << r.error().to_string();
    auto back = read(**q, 0, data.size());
    std::vector<uint8_t> want = data;
    std::fill(want.begin() + 4096, want.begin() + 4096 + 8192, 0);
    EXPECT_EQ(back, want) << "op " << static_cast<int>(op) << " unmap " << unmap;
  }
  // Unaligned to 4 KiB: still exact.
  auto data = pattern(8192, 5);
  ASSERT_TRUE(write(**q, 0, data));
  ASSERT_TRUE(run(**q, IoRequest{IoOp::kWriteZeroes, 512, 1024, {}, false, {}}));
  auto back = read(**q, 0, 8192);
  std::fill(data.begin() + 512, data.begin() + 1536, 0);
  EXPECT_EQ(back, data);
}

TEST_P(BackendTest, OutOfRangeIsRejected) {
  auto q = backend_->make_queue(4);
  ASSERT_TRUE(q);
  std::vector<uint8_t> buf(1024);
  auto r = run(**q, IoRequest{IoOp::kRead, kSize - 512, 1024, {{buf.data(), 1024}}, false, {}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kOutOfRange);
  auto z = run(**q, IoRequest{IoOp::kWriteZeroes, UINT64_MAX - 100, 512, {}, false, {}});
  ASSERT_FALSE(z);
  EXPECT_EQ(z.error().code, Errc::kOutOfRange);
}

TEST_P(BackendTest, ReadOnlyRejectsWrites) {
  {
    auto q = backend_->make_queue(4);
    ASSERT_TRUE(q);
    auto data = pattern(512, 6);
    ASSERT_TRUE(write(**q, 0, data));
  }
  auto ro = GetParam() == Kind::kMemory ? open(true) : (backend_.reset(), open(true));
  ASSERT_TRUE(ro);
  EXPECT_TRUE(ro->read_only());
  auto q = ro->make_queue(4);
  ASSERT_TRUE(q);
  auto before = read(**q, 0, 512);
  std::vector<uint8_t> data(512, 0xAB);
  for (auto op : {IoOp::kWrite, IoOp::kDiscard, IoOp::kWriteZeroes}) {
    auto r = run(**q, IoRequest{op, 0, 512, op == IoOp::kWrite ? IoVecs{{data.data(), 512}} : IoVecs{}, false, {}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  }
  EXPECT_EQ(read(**q, 0, 512), before);
  EXPECT_TRUE(run(**q, IoRequest{IoOp::kFlush, 0, 0, {}, false, {}}));
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendTest,
                         ::testing::Values(Kind::kMemory, Kind::kFileSync, Kind::kFileUring),
                         [](const auto& p) { return backend_name(p.param); });

// --- file-specific open errors -------------------------------------------------

TEST(FileBackendOpen, MissingFileNamesPath) {
  TempDir d;
  FileOptions o;
  o.path = (d.path / "nope.img").string();
  auto b = open_file_backend(o);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::kNotFound);
  EXPECT_NE(b.error().message.find(o.path), std::string::npos) << b.error().message;
}

TEST(FileBackendOpen, CreateMakesFileOfRequestedSize) {
  TempDir d;
  FileOptions o;
  o.path = (d.path / "new.img").string();
  o.create = true;
  o.size = 64 * 1024;
  o.engine = FileEngine::kSync;
  auto b = open_file_backend(o);
  ASSERT_TRUE(b) << b.error().to_string();
  EXPECT_EQ((*b)->size_bytes(), 64u * 1024);
  EXPECT_EQ(fs::file_size(o.path), 64u * 1024);
}

TEST(FileBackendOpen, SizeNotMultipleOf512) {
  TempDir d;
  const auto path = (d.path / "odd.img").string();
  std::ofstream(path) << std::string(1000, 'x');
  FileOptions o;
  o.path = path;
  auto b = open_file_backend(o);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::kInvalidArgument);
  EXPECT_NE(b.error().message.find(path), std::string::npos);
  EXPECT_NE(b.error().message.find("512"), std::string::npos);

  FileOptions c;
  c.path = (d.path / "c.img").string();
  c.create = true;
  c.size = 1000;
  auto b2 = open_file_backend(c);
  ASSERT_FALSE(b2);
  EXPECT_NE(b2.error().message.find("512"), std::string::npos);
  EXPECT_FALSE(fs::exists(c.path));
}

TEST(FileBackendOpen, EmptyFileWithoutSize) {
  TempDir d;
  const auto path = (d.path / "empty.img").string();
  std::ofstream(path).flush();
  FileOptions o;
  o.path = path;
  auto b = open_file_backend(o);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find(path), std::string::npos);
}

TEST(FileBackendOpen, SmallerThanRequestedWithoutCreate) {
  TempDir d;
  const auto path = (d.path / "small.img").string();
  std::ofstream(path) << std::string(512, 'x');
  FileOptions o;
  o.path = path;
  o.size = 4096;
  auto b = open_file_backend(o);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find(path), std::string::npos);
}

TEST(FileBackendOpen, ReadWriteOnReadOnlyFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores file modes";
  TempDir d;
  const auto path = (d.path / "ro.img").string();
  std::ofstream(path) << std::string(4096, 'x');
  ::chmod(path.c_str(), 0400);
  FileOptions o;
  o.path = path;
  auto b = open_file_backend(o);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::kPermissionDenied);
  EXPECT_NE(b.error().message.find(path), std::string::npos);
  o.read_only = true;
  EXPECT_TRUE(open_file_backend(o));
}

TEST(FileBackendOpen, DirectoryIsRejected) {
  TempDir d;
  FileOptions o;
  o.path = d.path.string();
  o.read_only = true;
  auto b = open_file_backend(o);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find(o.path), std::string::npos);
}

TEST(FileBackendOpen, AutoEnginePicksIoUringWhenAvailable) {
  TempDir d;
  FileOptions o;
  o.path = (d.path / "a.img").string();
  o.create = true;
  o.size = 4096;
  auto b = open_file_backend(o);
  ASSERT_TRUE(b);
  auto q = (*b)->make_queue(4);
  ASSERT_TRUE(q);
  // auto = io_uring when the kernel allows it (completion fd), else sync (-1).
  const bool uring = (*b)->describe().find("io_uring") != std::string::npos;
  EXPECT_EQ((*q)->completion_fd() >= 0, uring);
}

TEST(MemoryBackend, RejectsBadSizes) {
  EXPECT_FALSE(make_memory_backend(0));
  EXPECT_FALSE(make_memory_backend(1000));
  EXPECT_TRUE(make_memory_backend(4096));
}

}  // namespace
}  // namespace iceblk::backend
