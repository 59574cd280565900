// The SIGBUS guard (memory/fault_guard.h): a fault on a registered guest mapping
// whose file shrank is contained (the access completes on zero pages, the mapping
// is poisoned, nothing else is); a fault anywhere else, on a mapping unregistered
// before its munmap, or a SIGBUS sent by kill still kills the process.
#include "memory/fault_guard.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "base/sanitizers.h"
#include "base/unique_fd.h"
#include "memory/guest_memory.h"

namespace iceblk::memory {
namespace {

constexpr bool kThreadSanitizer = ICEBLK_TSAN;
constexpr bool kSanitized = ICEBLK_ASAN || kThreadSanitizer;
// The exit status ThreadSanitizer ends a process with after a report
// (scripts/test.sh --sanitize thread: TSAN_OPTIONS exitcode=66).
constexpr int kTsanExitCode = 66;

// Killed by the SIGBUS the guard passed on. Under a sanitizer the guard chains to the
// sanitizer's own handler, which reports the fault and ends the process: ASan aborts
// (abort_on_error=1, as scripts/test.sh --sanitize address sets it), TSan exits with
// its exitcode. Still a death of the SIGBUS, not a survival (exit 0) or a set-up error.
bool killed_by_the_sigbus(int status) {
  if (kThreadSanitizer && WIFEXITED(status)) return WEXITSTATUS(status) == kTsanExitCode;
  if (!WIFSIGNALED(status)) return false;
  return WTERMSIG(status) == SIGBUS || (kSanitized && WTERMSIG(status) == SIGABRT);
}

size_t page_size() {
  return static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

// A memfd of `pages` pages, each filled with its index + 1.
UniqueFd make_file(size_t pages) {
  UniqueFd fd(::memfd_create("fault-guard-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd);
  std::vector<uint8_t> buf(page_size());
  for (size_t p = 0; p < pages; ++p) {
    std::memset(buf.data(), static_cast<int>(p + 1), buf.size());
    EXPECT_EQ(::pwrite(fd.get(), buf.data(), buf.size(), static_cast<off_t>(p * page_size())),
              static_cast<ssize_t>(buf.size()));
  }
  return fd;
}

// Volatile: the compiler must really touch the page.
uint8_t touch(const uint8_t* p) {
  return *static_cast<const volatile uint8_t*>(p);
}

TEST(FaultGuard, FaultOnAShrunkRegisteredMappingIsContained) {
  const size_t pg = page_size();
  UniqueFd fd = make_file(8);
  UniqueFd other_fd = make_file(2);
  auto m = Mapping::map_fd(fd.get(), 0, 8 * pg, Mapping::Faults::kContain);
  ASSERT_TRUE(m) << m.error().to_string();
  auto other = Mapping::map_fd(other_fd.get(), 0, 2 * pg, Mapping::Faults::kContain);
  ASSERT_TRUE(other) << other.error().to_string();
  uint8_t* base = (*m)->data();
  EXPECT_EQ(touch(base + 5 * pg), 6);
  EXPECT_FALSE((*m)->poisoned());
  const uint64_t before = fault_guard::contained_faults();

  // The front-end's attack: cut the file down to 3 pages under the mapping.
  ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(3 * pg)), 0);
  // Reads and writes beyond the new end complete (on zero pages), from any thread.
  EXPECT_EQ(touch(base + 5 * pg + 17), 0);
  std::thread([&] { base[7 * pg] = 0x5a; }).join();
  EXPECT_EQ(touch(base + 7 * pg), 0x5a);
  EXPECT_TRUE((*m)->poisoned());
  EXPECT_EQ(fault_guard::contained_faults(), before + 1) << "one fault replaces the whole cut tail";
  // The pages still in the file keep their bytes and stay shared with it.
  EXPECT_EQ(touch(base + 2 * pg), 3);
  base[0] = 0x77;
  uint8_t back = 0;
  ASSERT_EQ(::pread(fd.get(), &back, 1, 0), 1);
  EXPECT_EQ(back, 0x77);
  // Only that mapping is poisoned.
  EXPECT_FALSE((*other)->poisoned());

  // GuestMemory reports it for the region it backs.
  Region r;
  r.guest_addr = 0x1000000;
  r.size = 8 * pg;
  r.user_addr = 0x1000000;
  r.host = base;
  r.mapping = *m;
  auto gm = GuestMemory::create({r});
  ASSERT_TRUE(gm);
  EXPECT_TRUE(gm->poisoned());
  Region r2 = r;
  r2.host = (*other)->data();
  r2.size = 2 * pg;
  r2.mapping = *other;
  auto gm2 = GuestMemory::create({r2});
  ASSERT_TRUE(gm2);
  EXPECT_FALSE(gm2->poisoned());
}

TEST(FaultGuard, MappingWithAnOffsetIsGuardedToItsEnd) {
  const size_t pg = page_size();
  UniqueFd fd = make_file(6);
  auto m = Mapping::map_fd(fd.get(), 2 * pg + 100, 3 * pg, Mapping::Faults::kContain);
  ASSERT_TRUE(m) << m.error().to_string();
  ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(3 * pg)), 0);
  // data() is at file offset 2 pages + 100; file page 3 onwards is gone.
  EXPECT_EQ(touch((*m)->data()), 3);
  EXPECT_EQ(touch((*m)->data() + (*m)->size() - 1), 0);
  EXPECT_TRUE((*m)->poisoned());
}

using FaultGuardDeathTest = ::testing::Test;

TEST_F(FaultGuardDeathTest, FaultOnAnUnregisteredMappingStillKills) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const size_t pg = page_size();
        // The handler is installed (a guarded mapping exists) ...
        UniqueFd guarded_fd = make_file(1);
        auto guarded = Mapping::map_fd(guarded_fd.get(), 0, pg, Mapping::Faults::kContain);
        if (!guarded) _exit(3);
        // ... but this mapping is not registered: a real bug, which must crash.
        UniqueFd fd = make_file(4);
        auto m = Mapping::map_fd(fd.get(), 0, 4 * pg);
        if (!m || ::ftruncate(fd.get(), 0) != 0) _exit(4);
        (void)touch((*m)->data() + pg);
        _exit(0);
      },
      killed_by_the_sigbus, "");
}

TEST_F(FaultGuardDeathTest, AddressOfAnUnmappedGuardedMappingIsForgotten) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const size_t pg = page_size();
        void* old_base = nullptr;
        {
          UniqueFd fd = make_file(4);
          auto m = Mapping::map_fd(fd.get(), 0, 4 * pg, Mapping::Faults::kContain);
          if (!m) _exit(3);
          old_base = (*m)->data();
        }  // unregistered, then unmapped
        // The same addresses, now an unguarded shared mapping of a file that shrinks.
        UniqueFd fd = make_file(4);
        void* p = ::mmap(old_base, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE,
                         fd.get(), 0);
        if (p != old_base || ::ftruncate(fd.get(), 0) != 0) _exit(4);
        (void)touch(static_cast<uint8_t*>(p) + pg);
        _exit(0);
      },
      killed_by_the_sigbus, "");
}

TEST_F(FaultGuardDeathTest, SigbusSentByKillStillKills) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        UniqueFd fd = make_file(1);
        auto m = Mapping::map_fd(fd.get(), 0, page_size(), Mapping::Faults::kContain);
        if (!m) _exit(3);
        ::kill(::getpid(), SIGBUS);
        _exit(0);
      },
      killed_by_the_sigbus, "");
}

TEST(FaultGuard, RegistrationsAreRecycled) {
  UniqueFd fd = make_file(1);
  // Far more mappings over time than the registry holds at once.
  for (size_t i = 0; i < fault_guard::kMaxRanges + 16; ++i) {
    auto m = Mapping::map_fd(fd.get(), 0, page_size(), Mapping::Faults::kContain);
    ASSERT_TRUE(m) << i << ": " << m.error().to_string();
    EXPECT_FALSE((*m)->poisoned());
  }
  EXPECT_EQ(fault_guard::register_range(nullptr, 4096, 4096).error().code, Errc::kInvalidArgument);
}

}  // namespace
}  // namespace iceblk::memory
