// The testing-only completion hold (blk/completion_hold.h): its option grammar, which
// completions it holds, and when it lets them go (by count, by time, all at drain).
#include "blk/completion_hold.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <utility>
#include <vector>

namespace iceblk::blk {
namespace {

TEST(CompletionHold, ParsesTheOption) {
  auto a = parse_completion_hold("16");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->every, 16u);
  EXPECT_EQ(a->release_after, 1u);
  EXPECT_EQ(a->max_ms, 0u);
  auto b = parse_completion_hold("4:8:200");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->every, 4u);
  EXPECT_EQ(b->release_after, 8u);
  EXPECT_EQ(b->max_ms, 200u);
  for (const char* bad : {"", "0", "4:0", "x", "4:", "4:8:200:1", "-1", "4:8:2x"}) {
    auto e = parse_completion_hold(bad);
    ASSERT_FALSE(e) << bad;
    EXPECT_NE(e.error().message.find("--test-reorder-completions"), std::string::npos);
  }
}

TEST(CompletionHold, HoldsEveryNthUntilLaterOnesWerePushed) {
  auto h = CompletionHold::create({3, 2, 0}, -1);
  ASSERT_TRUE(h) << h.error().to_string();
  std::vector<std::pair<uint16_t, uint32_t>> pushed;
  auto push = [&](uint16_t head, uint32_t len) { pushed.emplace_back(head, len); };
  // Completions 0, 3, 6, ... are held; the others go straight through.
  std::vector<uint16_t> order;
  for (uint16_t head = 0; head < 6; ++head) {
    if (h->hold(head, head + 100u)) continue;
    order.push_back(head);
    h->pushed();
    h->release([&](uint16_t hd, uint32_t len) {
      push(hd, len);
      order.push_back(hd);
    });
  }
  // 0 held, 1, 2 pushed -> 0 released; 3 held, 4, 5 pushed -> 3 released.
  EXPECT_EQ(order, (std::vector<uint16_t>{1, 2, 0, 4, 5, 3}));
  EXPECT_EQ(pushed, (std::vector<std::pair<uint16_t, uint32_t>>{{0, 100}, {3, 103}}));
  EXPECT_EQ(h->held(), 0u);
}

TEST(CompletionHold, TimeLimitWakesTheWorkerAndDrainReleasesAll) {
  auto h = CompletionHold::create({2, 1000, 30}, -1);
  ASSERT_TRUE(h);
  ASSERT_TRUE(h->hold(7, 1));
  EXPECT_EQ(h->held(), 1u);
  pollfd p{h->event_fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 2000), 1)
      << "the event fd must become readable when the time limit passes";
  std::vector<uint16_t> out;
  h->release([&](uint16_t head, uint32_t) { out.push_back(head); });
  EXPECT_EQ(out, (std::vector<uint16_t>{7}));
  // Held without a time limit: only drain (all) lets it go.
  auto forever = CompletionHold::create({1, 1000, 0}, -1);
  ASSERT_TRUE(forever);
  ASSERT_TRUE(forever->hold(9, 1));
  forever->release([&](uint16_t head, uint32_t) { out.push_back(head); });
  EXPECT_EQ(out.size(), 1u);
  forever->release([&](uint16_t head, uint32_t) { out.push_back(head); }, /*all=*/true);
  EXPECT_EQ(out, (std::vector<uint16_t>{7, 9}));
}

}  // namespace
}  // namespace iceblk::blk
