#include <gtest/gtest.h>

#include "base/checked.h"
#include "base/result.h"
#include "base/secret_bytes.h"
#include "base/thread_name.h"

namespace iceblk {
namespace {

TEST(ThreadName, VringWorkerNameKeepsTheQueueAndCutsTheExportAt15Bytes) {
  EXPECT_EQ(vring_worker_thread_name("vm0", 0), "vq0:vm0");
  EXPECT_EQ(vring_worker_thread_name("", 3), "vq3");
  EXPECT_EQ(vring_worker_thread_name("production-database", 12), "vq12:production");
  EXPECT_EQ(vring_worker_thread_name("production-database", 12).size(), kMaxThreadNameLen);
}

TEST(Checked, AddAndMulDetectOverflow) {
  EXPECT_EQ(checked_add<uint64_t>(1, 2), 3u);
  EXPECT_FALSE(checked_add<uint64_t>(UINT64_MAX, 1));
  EXPECT_FALSE(checked_mul<uint64_t>(UINT64_MAX / 2 + 1, 2));
  EXPECT_EQ(checked_shl(1, 9), 512u);
  EXPECT_FALSE(checked_shl(UINT64_MAX >> 8, 9));
}

TEST(SecretBytes, MoveLeavesSourceEmptyAndEqualsIsExact) {
  const uint8_t k[4] = {1, 2, 3, 4};
  SecretBytes a(k);
  EXPECT_TRUE(a.equals(k));
  SecretBytes b(std::move(a));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_TRUE(b.equals(k));
  const uint8_t other[4] = {1, 2, 3, 5};
  EXPECT_FALSE(b.equals(other));
  b.wipe();
  EXPECT_TRUE(b.empty());
}

Result<int> half(int v) {
  if (v % 2) return fail(Errc::kInvalidArgument, "{} is odd", v);
  return v / 2;
}

Result<int> quarter(int v) {
  ICEBLK_ASSIGN_OR_RETURN(int h, half(v));
  return half(h);
}

TEST(Result, PropagatesErrorsWithMessages) {
  EXPECT_EQ(*quarter(8), 2);
  auto r = quarter(6);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_EQ(r.error().message, "3 is odd");
}

}  // namespace
}  // namespace iceblk
