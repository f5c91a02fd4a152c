// Ring: completions reach their Op exactly once, also when the submission queue fills up;
// deferred work runs after them; a ring that drives its own loop runs Asio's handlers too.

#include "tunnel/ring.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

namespace nbdtunnel::tunnel {
namespace {

using namespace std::chrono_literals;

void run_until(boost::asio::io_context& io, const std::function<bool()>& done) {
  for (int i = 0; i < 200 && !done(); ++i) {
    io.restart();
    io.run_for(10ms);
  }
}

// n no-ops on ring; each counts itself in completed when it completes with 0.
std::vector<std::unique_ptr<Op>> prepare_nops(Ring& ring, int n, int& completed) {
  std::vector<std::unique_ptr<Op>> ops;
  for (int i = 0; i < n; ++i) {
    ops.push_back(std::make_unique<Op>());
    ops.back()->set_handler([&completed](int res, std::uint32_t) {
      EXPECT_EQ(res, 0);
      ++completed;
    });
    io_uring_prep_nop(ring.prepare(*ops.back()));
  }
  return ops;
}

TEST(Ring, EveryOperationCompletesOnce) {
  boost::asio::io_context io;
  Ring ring(io, 8);
  std::vector<int> results(3, 0);
  std::vector<std::unique_ptr<Op>> ops;
  for (int i = 0; i < 3; ++i) {
    ops.push_back(std::make_unique<Op>());
    ops.back()->set_handler([&results, i](int res, std::uint32_t) { results[i] += res + 1; });
    io_uring_prep_nop(ring.prepare(*ops.back()));
    EXPECT_TRUE(ops.back()->busy());
  }
  EXPECT_EQ(ring.in_flight(), 3u);
  run_until(io, [&] { return ring.in_flight() == 0; });
  EXPECT_EQ(results, (std::vector<int>{1, 1, 1}));
  for (auto& op : ops) EXPECT_FALSE(op->busy());
}

// More operations prepared in one handler than the submission queue holds: the ring submits
// when it is full instead of looping or dropping any.
TEST(Ring, FullSubmissionQueueIsSubmittedNotLost) {
  boost::asio::io_context io;
  Ring ring(io, 4);
  constexpr int kOps = 1000;
  int completed = 0;
  const auto ops = prepare_nops(ring, kOps, completed);
  run_until(io, [&] { return completed == kOps; });
  EXPECT_EQ(completed, kOps);
  EXPECT_EQ(ring.in_flight(), 0u);
  EXPECT_EQ(ring.submit_failures(), 0u);
}

TEST(Ring, CancelledWaitCompletesWithEcanceled) {
  boost::asio::io_context io;
  Ring ring(io);
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  Op op;
  int result = 1;
  op.set_handler([&](int res, std::uint32_t) { result = res; });
  io_uring_prep_poll_add(ring.prepare(op), efd, POLLIN);
  run_until(io, [] { return true; });
  ring.cancel(op);
  run_until(io, [&] { return !op.busy(); });
  EXPECT_EQ(result, -ECANCELED);
  ring.cancel(op);  // not busy: nothing happens
  ::close(efd);
}

TEST(Ring, DeferredWorkRunsAfterTheCompletionsAndEveryItemOnce) {
  boost::asio::io_context io;
  Ring ring(io);
  std::vector<std::string> order;
  Op op;
  op.set_handler([&](int, std::uint32_t) {
    order.push_back("completion");
    ring.defer([&] { order.push_back("deferred by the completion"); });
  });
  io_uring_prep_nop(ring.prepare(op));
  ring.defer([&] { order.push_back("deferred first"); });
  run_until(io, [&] { return order.size() == 3; });
  EXPECT_EQ(order.size(), 3u);
  EXPECT_EQ(std::count(order.begin(), order.end(), "completion"), 1);
  EXPECT_EQ(order.back(), "deferred by the completion");
}

// Work that defers itself again (a reader yielding) runs once per turn, and the completions
// that arrive meanwhile are still delivered.
TEST(Ring, SelfDeferringWorkDoesNotStarveCompletions) {
  boost::asio::io_context io;
  Ring ring(io, 64, Ring::Driver::self);
  int yields = 0;
  std::function<void()> yield = [&] {
    ++yields;
    ring.defer(yield);
  };
  ring.defer(yield);
  int completed = 0;
  const auto ops = prepare_nops(ring, 10, completed);
  for (int turn = 0; turn < 100 && completed < 10; ++turn) ring.run_once(10ms);
  EXPECT_EQ(completed, 10);
  EXPECT_LE(yields, 100);  // once per turn, not in a loop of its own
  EXPECT_GE(yields, 1);
}

TEST(Ring, SelfDrivenRingDeliversCompletions) {
  boost::asio::io_context io;
  Ring ring(io, 4, Ring::Driver::self);
  constexpr int kOps = 100;  // more than the submission queue holds
  int completed = 0;
  const auto ops = prepare_nops(ring, kOps, completed);
  for (int turn = 0; turn < 100 && completed < kOps; ++turn) ring.run_once(10ms);
  EXPECT_EQ(completed, kOps);
  EXPECT_EQ(ring.in_flight(), 0u);
}

// Asio's timers and the handlers they post run from the ring's loop: its reactor's descriptor
// is polled from the ring. Each turn may wait 10 s, so a missed wake-up fails the test (slowly)
// rather than passing by chance.
TEST(Ring, SelfDrivenRingRunsAsioTimersAndPosts) {
  boost::asio::io_context io{1};
  Ring ring(io, 8, Ring::Driver::self);
  boost::asio::steady_timer timer(io, 1ms);
  bool fired = false, posted = false;
  timer.async_wait([&](const boost::system::error_code& ec) {
    fired = !ec;
    boost::asio::post(io, [&] { posted = true; });
  });
  for (int turn = 0; turn < 5 && !(fired && posted); ++turn) ring.run_once(10s);
  EXPECT_TRUE(fired);
  EXPECT_TRUE(posted);
}

// Work posted from another thread wakes a loop that waits in io_uring_enter (Asio alone would
// not: its reactor is only ever polled, never waited in, so it believes no one needs waking).
TEST(Ring, SelfDrivenRingWakesForWorkFromAnotherThread) {
  boost::asio::io_context io{1};
  Ring ring(io, 8, Ring::Driver::self);
  ring.run_once(1ms);  // the loop has polled Asio once, as a running daemon has
  const std::uint64_t idle_before = ring.idle_turns();
  std::atomic<bool> ran{false};
  std::thread other([&] {
    std::this_thread::sleep_for(20ms);  // let the loop below block first
    boost::asio::post(io, [&] { ran = true; });
  });
  for (int turn = 0; turn < 3 && !ran; ++turn) ring.run_once(10s);
  other.join();
  EXPECT_TRUE(ran);
  EXPECT_EQ(ring.idle_turns(), idle_before);  // woken, not found after a wait in vain
}

// A handler that Asio queues while a ring completion runs (an Asio operation started there that
// finished at once, such as a QMP write) runs in the same turn or the next, not when some later
// Asio event happens to wake the loop.
TEST(Ring, SelfDrivenRingRunsAsioWorkQueuedByACompletion) {
  boost::asio::io_context io{1};
  Ring ring(io, 8, Ring::Driver::self);
  for (int turn = 0; turn < 3; ++turn) ring.run_once(1ms);  // settled, as a running daemon is
  bool ran = false;
  Op op;
  op.set_handler([&](int, std::uint32_t) { boost::asio::post(io, [&] { ran = true; }); });
  io_uring_prep_nop(ring.prepare(op));
  const std::uint64_t idle_before = ring.idle_turns();
  for (int turn = 0; turn < 3 && !ran; ++turn) ring.run_once(10s);
  EXPECT_TRUE(ran);
  EXPECT_EQ(ring.idle_turns(), idle_before);  // woken, not found after a wait in vain
}

}  // namespace
}  // namespace nbdtunnel::tunnel
