// Ring: completions reach their Op exactly once, also when the submission queue fills up.

#include "tunnel/ring.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>

#include <chrono>
#include <memory>
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
  std::vector<std::unique_ptr<Op>> ops;
  for (int i = 0; i < kOps; ++i) {
    ops.push_back(std::make_unique<Op>());
    ops.back()->set_handler([&](int res, std::uint32_t) {
      EXPECT_EQ(res, 0);
      ++completed;
    });
    io_uring_prep_nop(ring.prepare(*ops.back()));
  }
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

}  // namespace
}  // namespace nbdtunnel::tunnel
