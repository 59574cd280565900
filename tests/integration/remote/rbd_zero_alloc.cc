// The RBD backend's data path allocates nothing of iceblk's own in steady state
// (issue 18). librbd allocates inside every call (its completions, bufferlists,
// messenger); those do not count. Every allocation of the process is seen
// (support/alloc_hook.h) and blamed on librbd when a frame of librbd, librados or
// libceph-common is on its stack, on iceblk otherwise. Completion callbacks run on
// librbd's threads (with librbd below them), so what on_complete does is not
// separated here; it only moves a pointer into a list with capacity for every
// operation.
//   rbd_zero_alloc CEPH_CONF     (rbd_test.sh runs it on its cluster)
#include <dlfcn.h>
#include <execinfo.h>
#include <poll.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <vector>

#include "backend/image_spec.h"
#include "support/alloc_hook.h"

namespace {

using namespace iceblk::backend;

std::atomic<bool> g_counting{false};
std::atomic<uint64_t> g_theirs{0}, g_ours{0};
constexpr int kDepth = 48;
void* g_our_stack[kDepth];
int g_our_stack_len = 0;

bool in_ceph(void* pc) {
  Dl_info info;
  if (::dladdr(pc, &info) == 0 || info.dli_fname == nullptr) return false;
  const char* base = std::strrchr(info.dli_fname, '/');
  base = base != nullptr ? base + 1 : info.dli_fname;
  return std::strncmp(base, "librbd.", 7) == 0 || std::strncmp(base, "librados.", 9) == 0 ||
         std::strncmp(base, "libceph-common.", 15) == 0;
}

void note_alloc() {
  if (!g_counting.load(std::memory_order_relaxed)) return;
  void* st[kDepth];
  const int len = ::backtrace(st, kDepth);
  for (int i = 0; i < len; ++i) {
    if (in_ceph(st[i])) {
      g_theirs.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  if (g_ours.fetch_add(1, std::memory_order_relaxed) == 0) {
    std::memcpy(g_our_stack, st, sizeof(void*) * static_cast<size_t>(len));
    g_our_stack_len = len;
  }
}

struct Kind {
  IoOp op;
  uint64_t len;
};
constexpr Kind kMix[] = {{IoOp::kWrite, 4096}, {IoOp::kRead, 4096},       {IoOp::kWrite, 65536},
                         {IoOp::kRead, 65536}, {IoOp::kWrite, 1 << 20},   {IoOp::kRead, 1 << 20},
                         {IoOp::kFlush, 0},    {IoOp::kWriteZeroes, 8192}};
constexpr unsigned kQueueDepth = 16;

}  // namespace

int main(int argc, char** argv) {
#ifdef ICEBLK_ALLOC_HOOK_SANITIZED
  std::puts("rbd_zero_alloc: skipped: the sanitizer owns malloc");
  return 77;
#endif
  if (argc != 2) {
    std::fprintf(stderr, "usage: rbd_zero_alloc CEPH_CONF\n");
    return 2;
  }
  auto spec = parse_image_spec(std::string("rbd:rbd/zero-alloc:conf=") + argv[1]);
  if (!spec) {
    std::fprintf(stderr, "rbd_zero_alloc: %s\n", spec.error().message.c_str());
    return 1;
  }
  RemoteOptions opts;
  opts.size = 64 << 20;
  auto backend = open_rbd_backend(*spec, opts);
  if (!backend) {
    std::fprintf(stderr, "rbd_zero_alloc: %s\n", backend.error().message.c_str());
    return 1;
  }
  auto queue = (*backend)->make_queue(64);
  if (!queue) {
    std::fprintf(stderr, "rbd_zero_alloc: %s\n", queue.error().message.c_str());
    return 1;
  }
  IoQueue& q = **queue;
  // One buffer per slot of the driver's own queue depth.
  std::vector<std::vector<uint8_t>> bufs(kQueueDepth, std::vector<uint8_t>(1 << 20, 0x5a));
  std::vector<unsigned> free_slots;
  free_slots.reserve(kQueueDepth);
  for (unsigned i = 0; i < kQueueDepth; ++i) free_slots.push_back(i);
  uint64_t done = 0, errors = 0, next = 0;
  struct Ctx {
    std::vector<unsigned>* free_slots;
    uint64_t* done;
    uint64_t* errors;
  } ctx{&free_slots, &done, &errors};

  auto run = [&](uint64_t n) {
    const uint64_t target = done + n;
    while (done < target) {
      while (!free_slots.empty() && next < target) {
        const unsigned slot = free_slots.back();
        free_slots.pop_back();
        const Kind& k = kMix[next % std::size(kMix)];
        IoRequest r;
        r.op = k.op;
        r.offset = (next * (1 << 20)) % (opts.size - (1 << 20));
        if (k.op == IoOp::kRead || k.op == IoOp::kWrite) {
          r.iov = {{bufs[slot].data(), k.len}};
        } else {
          r.length = k.len;
        }
        // Two pointers: kept inline by std::function.
        r.done = [c = &ctx, slot](iceblk::Result<uint64_t> res) {
          if (!res) ++*c->errors;
          ++*c->done;
          c->free_slots->push_back(slot);
        };
        ++next;
        q.submit(std::move(r));
      }
      q.flush_submissions();
      pollfd p{q.completion_fd(), POLLIN, 0};
      ::poll(&p, 1, 1000);
      q.reap();
    }
  };

  iceblk::testing::set_alloc_observer(note_alloc);
  run(400);  // warm-up: librbd's caches, the slots' iovec lists
  g_counting = true;
  run(4000);
  g_counting = false;
  q.drain();
  std::printf(
      "rbd_zero_alloc: %llu requests (%llu errors): %llu allocation(s) of iceblk's own, %llu "
      "in librbd/librados\n",
      static_cast<unsigned long long>(done - 400), static_cast<unsigned long long>(errors),
      static_cast<unsigned long long>(g_ours.load()),
      static_cast<unsigned long long>(g_theirs.load()));
  if (g_ours.load() != 0) {
    std::printf("first stack of ours (resolve with addr2line -f -C -i -e rbd_zero_alloc):\n");
    backtrace_symbols_fd(g_our_stack, g_our_stack_len, 1);
    return 1;
  }
  return errors == 0 ? 0 : 1;
}
