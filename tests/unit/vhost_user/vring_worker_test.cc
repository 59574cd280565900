// VringWorker with polling (iceblkd --poll-us): requests are served while the worker
// spins with the driver's kicks suppressed, and a chain published just as the poll
// window ends (kicks still suppressed, so the driver does not kick) is not lost.
#include "vhost_user/vring_worker.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "support/ring_harness.h"
#include "unit/vhost_user/echo_device.h"

namespace iceblk::vhost_user {
namespace {

using namespace std::chrono_literals;
using test::RingHarness;
using test::RingOptions;
using virtio::Buffer;

class PollingEcho : public testing::EchoDevice {
 public:
  explicit PollingEcho(uint32_t us) : EchoDevice(1), us_(us) {}
  [[nodiscard]] uint32_t poll_us() const override { return us_; }

 private:
  uint32_t us_;
};

// A driver-side ring, the echo device and one worker serving its queue 0.
class Rig {
 public:
  Rig(bool event_idx, uint32_t poll_us) : dev_(poll_us) {
    RingOptions o;
    o.size = 16;
    o.event_idx = event_idx;
    auto h = RingHarness::create(o);
    EXPECT_TRUE(h) << h.error().to_string();
    h_ = std::move(*h);
    auto in = h_->alloc(16, 0x5a);
    auto out = h_->alloc(16, 0);
    EXPECT_TRUE(in && out);
    in_ = *in;
    out_ = *out;
  }
  ~Rig() {
    if (worker_) worker_->stop();
    if (kick_w_ >= 0) ::close(kick_w_);
  }

  void start() {
    kick_w_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ASSERT_GE(kick_w_, 0);
    UniqueFd kick(::dup(kick_w_));
    auto q = virtio::SplitQueue::activate(h_->driver().device_config(), h_->guest());
    ASSERT_TRUE(q) << q.error().to_string();
    auto w =
        VringWorker::start(0, dev_, std::move(*q), std::move(kick), notifier_, /*enabled=*/true);
    ASSERT_TRUE(w) << w.error().to_string();
    worker_ = std::move(*w);
  }

  // Publish one echo request; kick only when the device asks for it (as a virtio
  // driver does). Returns whether it kicked.
  bool publish() {
    EXPECT_TRUE(h_->driver().add(std::vector<Buffer>{{in_, 16, false}, {out_, 16, true}}));
    h_->driver().publish();
    const bool kick = h_->driver().needs_kick();
    if (kick) {
      const uint64_t one = 1;
      EXPECT_EQ(::write(kick_w_, &one, sizeof one), 8);
    }
    return kick;
  }

  // Wait for the completion of the request in flight; false after `timeout`.
  bool wait_used(std::chrono::milliseconds timeout = 3000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto u = h_->driver().get_used()) {
        EXPECT_EQ(u->len, 16u);
        return true;
      }
      std::this_thread::sleep_for(20us);
    }
    return false;
  }

  RingHarness& h() { return *h_; }
  VringWorker& worker() { return *worker_; }
  PollingEcho& dev() { return dev_; }

 private:
  PollingEcho dev_;
  std::unique_ptr<RingHarness> h_;
  GuestAddr in_{0}, out_{0};
  VringNotifier notifier_;
  int kick_w_ = -1;
  std::unique_ptr<VringWorker> worker_;
};

class VringWorkerPolling : public ::testing::TestWithParam<bool> {};  // EVENT_IDX or not

TEST_P(VringWorkerPolling, ServesEveryRequestWithKicksSuppressed) {
  constexpr uint32_t kPollUs = 1000;
  Rig rig(GetParam(), kPollUs);
  rig.start();
  std::mt19937 rng(7);
  int kicks = 0, back_to_back = 0, back_to_back_kicks = 0;
  constexpr int kRequests = 400;
  for (int i = 0; i < kRequests; ++i) {
    // Half the requests follow the last completion at once (inside the poll window:
    // no kick needed), the others after a pause around and past the window.
    const bool quick = i % 2 == 0;
    if (!quick) std::this_thread::sleep_for(std::chrono::microseconds(rng() % (3 * kPollUs)));
    const bool kicked = rig.publish();
    kicks += kicked;
    if (quick && i > 0) {
      ++back_to_back;
      back_to_back_kicks += kicked;
    }
    ASSERT_TRUE(rig.wait_used()) << "request " << i << " was not served (kicked: " << kicked << ")";
  }
  EXPECT_EQ(rig.dev().processed.load(), kRequests);
  // Requests published while the worker spins need no kick: most back-to-back ones
  // (the machine may preempt the worker past its window now and then).
  EXPECT_LT(back_to_back_kicks, back_to_back / 2) << "kicks " << kicks;
  EXPECT_FALSE(rig.worker().broken());
}

// The deterministic race: the hook runs on the worker when a poll window ended empty,
// with kicks still suppressed. It publishes a chain there; the driver sees no kick
// wanted and sends none. Only the worker's re-check after re-enabling kicks can find
// it; without that re-check the worker sleeps and the request is never served.
std::atomic<Rig*> g_rig{nullptr};
std::atomic<int> g_hook_calls{0};
std::atomic<int> g_hook_kicks{0};

void publish_at_poll_timeout(uint16_t /*queue*/) {
  if (g_hook_calls.fetch_add(1) != 0) return;  // once
  if (Rig* r = g_rig.load()) g_hook_kicks += r->publish();
}

TEST_P(VringWorkerPolling, ChainPublishedAsThePollWindowEndsIsNotLost) {
  Rig rig(GetParam(), 2000);
  g_rig = &rig;
  g_hook_calls = 0;
  g_hook_kicks = 0;
  VringWorker::set_poll_timeout_hook_for_testing(&publish_at_poll_timeout);
  rig.start();
  const bool served = rig.wait_used(3000ms);
  VringWorker::set_poll_timeout_hook_for_testing(nullptr);
  g_rig = nullptr;
  ASSERT_GE(g_hook_calls.load(), 1) << "the poll window never ended";
  EXPECT_EQ(g_hook_kicks.load(), 0) << "kicks were not suppressed while polling";
  EXPECT_TRUE(served) << "the chain published at the end of the poll window was lost";
  // And the worker is asleep with kicks on again: the next request kicks and is served.
  std::this_thread::sleep_for(100ms);  // well past the 2 ms window
  EXPECT_TRUE(rig.publish());
  EXPECT_TRUE(rig.wait_used());
}

TEST_P(VringWorkerPolling, StopsPromptlyWhileSpinning) {
  Rig rig(GetParam(), 900'000);  // a window far longer than the stop may take
  rig.start();
  rig.publish();
  ASSERT_TRUE(rig.wait_used());
  const auto t0 = std::chrono::steady_clock::now();
  rig.worker().stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 300ms);
}

INSTANTIATE_TEST_SUITE_P(Notify, VringWorkerPolling, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "EventIdx" : "Flags"; });

TEST(VringWorkerNoPolling, EveryRequestKicks) {
  Rig rig(true, 0);
  rig.start();
  for (int i = 0; i < 20; ++i) {
    EXPECT_TRUE(rig.publish()) << i;
    ASSERT_TRUE(rig.wait_used()) << i;
  }
}

}  // namespace
}  // namespace iceblk::vhost_user
