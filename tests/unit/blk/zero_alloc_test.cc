// Issue 13: the data path allocates nothing per request in steady state. Every
// malloc/calloc/realloc of the process is counted (operator new ends in malloc) while
// the device works, i.e. inside QueueProcessor::process(), which is everything a
// queue worker does per request (pop, parse, backend submit/reap, crypto, push used).
// The driver side of the harness (building chains, reading the used ring) runs with
// counting off. 10,000 requests of mixed kinds after a warm-up must allocate zero.
#include <execinfo.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include <gtest/gtest.h>

#include "blk_fixture.h"
#include "ice/key_blob.h"
#include "support/alloc_hook.h"

namespace {

std::atomic<bool> g_counting{false};
std::atomic<uint64_t> g_allocs{0};
// Distinct call stacks of the counted allocations (printed on failure; resolve the
// +0x offsets with addr2line -f -C -i -e blk_zero_alloc_test).
constexpr int kStacks = 12, kDepth = 24;
void* g_stack[kStacks][kDepth];
int g_stack_len[kStacks];
uint64_t g_stack_hits[kStacks];
int g_stacks = 0;

void note_alloc() {
  if (!g_counting.load(std::memory_order_relaxed)) return;
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  void* st[kDepth];
  const int len = ::backtrace(st, kDepth);
  int i = 0;
  for (; i < g_stacks; ++i) {
    if (g_stack_len[i] == len && std::equal(st, st + len, g_stack[i])) break;
  }
  if (i < g_stacks) {
    ++g_stack_hits[i];
  } else if (g_stacks < kStacks) {
    std::copy(st, st + len, g_stack[g_stacks]);
    g_stack_len[g_stacks] = len;
    g_stack_hits[g_stacks++] = 1;
  }
}
[[maybe_unused]] const bool g_observing = (iceblk::testing::set_alloc_observer(note_alloc), true);

}  // namespace


namespace iceblk::blk::testing {
namespace {

// A backend, and 0 or 1 crypto threads (iceblkd --crypto-threads: the 128 KiB
// requests are then crypted in pieces by the worker and the pool's thread, which counts too).
struct ZaParam {
  BackendKind backend;
  unsigned crypt_threads;
};

class ZeroAlloc : public ::testing::TestWithParam<ZaParam> {};

// A request kind of the mix, with its chain built once in driver memory and
// re-posted every round (the same buffers, fresh descriptors).
struct Kind {
  const char* name;
  std::vector<virtio::Buffer> bufs;
  bool indirect = false;  // posted as an indirect table (VIRTIO_F_INDIRECT_DESC)
  GuestAddr status{0};
};

TEST_P(ZeroAlloc, SteadyStateRequestsAllocateNothing) {
#ifdef ICEBLK_ALLOC_HOOK_SANITIZED
  GTEST_SKIP() << "the sanitizer owns malloc";
#endif
  DeviceSetup s;
  s.backend = GetParam().backend;
  s.crypt_threads = GetParam().crypt_threads;
  s.ice = true;
  s.size = 8 << 20;
  s.ring_size = 64;
  s.driver_mem = 16 << 20;
  BlkHarness h(s);
  ASSERT_NO_FATAL_FAILURE(h.init());
  ASSERT_TRUE(h.ice_negotiated());
  {
    ice::KeyBlobWire b{};
    b.alg = 0;
    b.data_unit_size_exp = 3;  // 4 KiB
    b.key_size = 3;            // 256
    b.key_len = 64;
    const auto key = random_bytes(64, 7);
    std::memcpy(b.key, key.data(), key.size());
    ASSERT_EQ(h.simple(h.header(kTypeIceProgramKey, 0, 0), as_bytes(b), 0).status, kStatusOk);
  }

  std::vector<Kind> kinds;
  auto add_kind = [&](const char* name, uint32_t type, uint64_t sector, uint32_t len, bool encrypted,
                      bool split) {
    Kind k{name, {}, split, {}};
    auto hdr = encrypted ? h.header(type, sector, 0, 1, sector / 8) : h.header(type, sector);
    auto ha = h.ring_->alloc_bytes(hdr, 8);
    ASSERT_TRUE(ha);
    k.bufs.push_back({*ha, static_cast<uint32_t>(hdr.size()), false});
    const bool in = type == kTypeIn;
    // Data in one descriptor, or in two uneven ones (a data unit split across iovecs)
    // behind an indirect table.
    const uint32_t first = split ? len / 2 + 512 : len;
    for (uint32_t part : {first, len - first}) {
      if (part == 0) continue;
      auto da = in ? h.ring_->alloc(part, 0xA5, 8) : h.ring_->alloc_bytes(random_bytes(part, part), 8);
      ASSERT_TRUE(da);
      k.bufs.push_back({*da, part, in});
    }
    auto sa = h.ring_->alloc(1, 0xA5, 8);
    ASSERT_TRUE(sa);
    k.status = *sa;
    k.bufs.push_back({*sa, 1, true});
    kinds.push_back(std::move(k));
  };
  for (bool enc : {false, true}) {
    add_kind(enc ? "enc write 4K" : "write 4K", kTypeOut, 8, 4096, enc, false);
    add_kind(enc ? "enc read 4K" : "read 4K", kTypeIn, 8, 4096, enc, false);
    add_kind(enc ? "enc write 128K" : "write 128K", kTypeOut, 1024, 128 * 1024, enc, true);
    add_kind(enc ? "enc read 128K" : "read 128K", kTypeIn, 1024, 128 * 1024, enc, true);
  }
  add_kind("flush", kTypeFlush, 0, 0, false, false);
  ASSERT_FALSE(HasFatalFailure());

  auto& driver = h.ring_->driver();
  // One round: every kind posted at once, processed until all have completed.
  // Only process() runs with counting on.
  auto round = [&]() -> ::testing::AssertionResult {
    std::vector<uint16_t> heads;
    for (auto& k : kinds) {
      h.ring_->bytes(k.status, 1)[0] = 0xA5;
      auto hd = driver.add(k.bufs, k.indirect);
      if (!hd) return ::testing::AssertionFailure() << "add: " << hd.error().to_string();
      heads.push_back(*hd);
    }
    driver.publish();
    size_t left = heads.size();
    for (int spin = 0; left > 0; ++spin) {
      if (spin > 10000) return ::testing::AssertionFailure() << left << " requests never completed";
      g_counting.store(true);
      auto r = h.proc_->process(h.ring_->device());
      g_counting.store(false);
      if (!r) return ::testing::AssertionFailure() << "process: " << r.error().to_string();
      while (auto u = driver.get_used()) --left;
      if (left > 0) {
        if (const int fd = h.proc_->completion_fd(); fd >= 0) {
          pollfd pf{fd, POLLIN, 0};
          ::poll(&pf, 1, 100);
        }
      }
    }
    for (auto& k : kinds) {
      if (h.ring_->bytes(k.status, 1)[0] != kStatusOk) {
        return ::testing::AssertionFailure() << k.name << ": status " << int{h.ring_->bytes(k.status, 1)[0]};
      }
    }
    return ::testing::AssertionSuccess();
  };

  for (int i = 0; i < 20; ++i) ASSERT_TRUE(round()) << "warm-up round " << i;
  g_allocs.store(0);
  g_stacks = 0;
  constexpr unsigned kRequests = 10000;
  unsigned done = 0;
  while (done < kRequests) {
    ASSERT_TRUE(round()) << "after " << done << " requests";
    done += static_cast<unsigned>(kinds.size());
  }
  const uint64_t n = g_allocs.load();
  if (n > 0) {
    for (int i = 0; i < g_stacks; ++i) {
      std::fprintf(stderr, "allocation site %d (%llu times):\n", i, static_cast<unsigned long long>(g_stack_hits[i]));
      ::backtrace_symbols_fd(g_stack[i], g_stack_len[i], 2);
    }
  }
  EXPECT_EQ(n, 0u) << "allocations by the device over " << done << " requests (" << kinds.size()
                   << " kinds; " << static_cast<double>(n) / done << " per request)";
  if (const auto& pool = h.dev_->config().crypt_pool) {
    // The pool's thread really crypted pieces (in the counted window): it was tested.
    EXPECT_GT(pool->pieces_by_threads(), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ZeroAlloc,
    ::testing::Values(ZaParam{BackendKind::kMemory, 0}, ZaParam{BackendKind::kFileSync, 0},
                      ZaParam{BackendKind::kFileUring, 0}, ZaParam{BackendKind::kMemory, 1},
                      ZaParam{BackendKind::kFileUring, 1}),
    [](const ::testing::TestParamInfo<ZaParam>& p) {
      return backend_name(p.param.backend) +
             (p.param.crypt_threads > 0 ? std::string("_CryptoThreads") : std::string());
    });

}  // namespace
}  // namespace iceblk::blk::testing
