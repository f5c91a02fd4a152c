// WriteQueue over a scripted transport: order, batching, partial writes, waits for room, pipe
// payloads, the control-packet budget, close and write errors, and a transport that holds bytes
// it accepted (as TLS holds records) until the socket takes them; retention for resumable
// channels: acknowledgement, detach and attach to a new transport from the peer's byte count.

#include "tunnel/write_queue.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <limits>
#include <optional>
#include <vector>

#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {
namespace {

using Bytes = std::vector<std::uint8_t>;
using namespace std::chrono_literals;

// Accepts up to `room` bytes per call (unlimited by default); with no room it says would_block,
// and its wait completes when the test calls make_room(). Everything written is recorded.
class ScriptedTransport final : public Transport {
 public:
  explicit ScriptedTransport(Ring& ring) : ring_(ring), event_(::eventfd(0, EFD_CLOEXEC)) {}

  Result<std::size_t> read(std::span<std::uint8_t>) override { return would_block_error(); }
  Result<std::size_t> write(std::span<const iovec> iov, bool more) override {
    ++writes;
    last_more = more;
    last_iov_count = iov.size();
    if (error) return *error;
    if (holds) {
      // Takes everything; only `room` of it reaches the wire now, the rest waits in held.
      for (const iovec& v : iov) {
        const auto* p = static_cast<const std::uint8_t*>(v.iov_base);
        held.insert(held.end(), p, p + v.iov_len);
      }
      std::size_t total = 0;
      for (const iovec& v : iov) total += v.iov_len;
      move_held();
      return total;
    }
    std::size_t taken = 0;
    for (const iovec& v : iov) {
      const std::size_t n = std::min(v.iov_len, room - taken);
      const auto* p = static_cast<const std::uint8_t*>(v.iov_base);
      wire.insert(wire.end(), p, p + n);
      taken += n;
      if (n < v.iov_len) break;
    }
    return take(taken);
  }
  bool can_splice() const override { return true; }
  Result<std::size_t> splice_in(int, std::size_t) override { return would_block_error(); }
  Result<std::size_t> splice_out(int pipe_r, std::size_t n, bool more) override {
    ++splices;
    last_more = more;
    Bytes buf(std::min(n, room));
    const ssize_t got = buf.empty() ? 0 : ::read(pipe_r, buf.data(), buf.size());
    if (got < 0) return system_error(errno, "pipe read");
    wire.insert(wire.end(), buf.begin(), buf.begin() + got);
    return take(static_cast<std::size_t>(got));
  }
  bool has_pending_output() const override { return !held.empty(); }
  Result<std::size_t> flush_pending() override {
    ++flushes;
    const std::size_t n = move_held();
    if (n == 0) return would_block_error();
    return n;
  }
  void wait_readable(Op&) override {}
  void wait_writable(Op& op) override {
    ++waits;
    io_uring_prep_poll_add(ring_.prepare(op), event_.get(), POLLIN);
  }
  void shutdown() override { make_room(0); }
  std::string describe() const override { return "scripted"; }

  void make_room(std::size_t bytes) {
    room = bytes;
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(event_.get(), &one, sizeof one);
  }

  Bytes wire;
  Bytes held;
  bool holds = false;
  int flushes = 0;
  std::size_t room = std::numeric_limits<std::size_t>::max();
  std::optional<Error> error;
  int writes = 0, splices = 0, waits = 0;
  std::size_t last_iov_count = 0;
  bool last_more = false;

 private:
  std::size_t move_held() {
    const std::size_t n = std::min(room, held.size());
    wire.insert(wire.end(), held.begin(), held.begin() + static_cast<std::ptrdiff_t>(n));
    held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(n));
    return n;
  }
  Result<std::size_t> take(std::size_t n) {
    if (n == 0) return would_block_error();
    return n;
  }
  Ring& ring_;
  unique_fd event_;
};

// Counts what its leases return.
struct Owner final : TxOwner {
  void buffer_returned(std::uint32_t index) override {
    returned.push_back(static_cast<int>(index));
  }
  void pipe_returned(std::size_t n) override { pipe_bytes += n; }
  std::vector<int> returned;
  std::size_t pipe_bytes = 0;
};

class WriteQueueTest : public ::testing::Test {
 protected:
  void run() {
    for (int i = 0; i < 100; ++i) {
      io_.restart();
      io_.run_for(5ms);
    }
  }
  Bytes bytes(std::size_t n, std::uint8_t first) {
    Bytes b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(first + i);
    return b;
  }
  WriteQueue& queue() { return queue_; }

  boost::asio::io_context io_;
  Ring ring_{io_};
  Poster poster_{ring_};
  ScriptedTransport transport_{ring_};
  std::vector<std::string> failures_;
  WriteQueue queue_{transport_, poster_,
                    [this](const Error& e) { failures_.push_back(e.message); }};
  Owner owner_;
};

TEST_F(WriteQueueTest, ItemsLeaveInOrderInOneGatheredWrite) {
  const Bytes a = bytes(10, 0), b = bytes(20, 100), c = bytes(5, 200);
  ASSERT_TRUE(queue().push(a));
  queue().push(BufferLease(owner_, 1, b));
  ASSERT_TRUE(queue().push(c));
  EXPECT_EQ(transport_.writes, 0) << "queuing must not write at once";
  run();
  EXPECT_EQ(transport_.writes, 1);
  EXPECT_EQ(transport_.last_iov_count, 3u);
  Bytes expected = a;
  expected.insert(expected.end(), b.begin(), b.end());
  expected.insert(expected.end(), c.begin(), c.end());
  EXPECT_EQ(transport_.wire, expected);
  EXPECT_EQ(owner_.returned, std::vector<int>{1});
  EXPECT_TRUE(queue().empty());
}

TEST_F(WriteQueueTest, PartialWritesKeepTheBytesAndReturnLeasesOnlyWhenSent) {
  transport_.room = 7;
  const Bytes a = bytes(10, 0), b = bytes(20, 50);
  queue().push(BufferLease(owner_, 0, a));
  queue().push(BufferLease(owner_, 1, b));
  run();
  Bytes expected = a;
  expected.insert(expected.end(), b.begin(), b.end());
  EXPECT_EQ(transport_.wire, expected);
  EXPECT_EQ(transport_.writes, 5);  // 30 bytes, 7 at a time
  EXPECT_EQ(owner_.returned, (std::vector<int>{0, 1}));
}

TEST_F(WriteQueueTest, NoRoomWaitsAndResumesWhenThereIs) {
  transport_.room = 0;
  const Bytes payload = bytes(100, 0);
  queue().push(BufferLease(owner_, 0, payload));
  run();
  EXPECT_EQ(transport_.waits, 1);
  EXPECT_TRUE(queue().busy());
  EXPECT_TRUE(owner_.returned.empty());
  // Queued while waiting: goes out with the rest once there is room.
  ASSERT_TRUE(queue().push(bytes(3, 9)));
  transport_.make_room(std::numeric_limits<std::size_t>::max());
  run();
  EXPECT_EQ(transport_.wire.size(), 103u);
  EXPECT_EQ(owner_.returned, std::vector<int>{0});
  EXPECT_FALSE(queue().busy());
}

TEST_F(WriteQueueTest, PipePayloadFollowsItsPrefixBySplice) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  unique_fd r(fds[0]), w(fds[1]);
  const Bytes payload = bytes(64, 1);
  ASSERT_EQ(::write(w.get(), payload.data(), payload.size()), 64);
  const Bytes before = bytes(8, 200), after = bytes(4, 250);
  ASSERT_TRUE(queue().push(before));
  PipeLease lease(owner_, r.get(), payload.size());
  lease.prefix().fill(0xee);
  queue().push(std::move(lease));
  ASSERT_TRUE(queue().push(after));
  run();
  // The control packet and the prefix in one write that says more follows, then the payload.
  EXPECT_EQ(transport_.splices, 1);
  EXPECT_EQ(transport_.writes, 2);
  Bytes expected = before;
  expected.insert(expected.end(), kPrefixSize, 0xee);
  expected.insert(expected.end(), payload.begin(), payload.end());
  expected.insert(expected.end(), after.begin(), after.end());
  EXPECT_EQ(transport_.wire, expected);
  EXPECT_EQ(owner_.pipe_bytes, payload.size());
}

TEST_F(WriteQueueTest, ControlBytesPastTheBudgetAreRefused) {
  transport_.room = 0;  // the peer reads nothing
  const Bytes mib(1u << 20, 0);
  int accepted = 0;
  for (; accepted < 100; ++accepted) {
    if (!queue().push(mib)) break;
  }
  EXPECT_EQ(accepted, static_cast<int>(WriteQueue::kMaxControlBytes >> 20));
  Status refused = queue().push(mib);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("not reading"), std::string::npos);
  EXPECT_EQ(queue().size(), static_cast<std::size_t>(accepted));
}

TEST_F(WriteQueueTest, CloseReturnsEveryLeaseUnsentAndRefusesMore) {
  transport_.room = 0;
  const Bytes payload = bytes(10, 0);
  queue().push(BufferLease(owner_, 0, payload));
  queue().push(BufferLease(owner_, 1, payload));
  run();
  queue().close();
  EXPECT_EQ(owner_.returned, (std::vector<int>{0, 1}));
  queue().push(BufferLease(owner_, 2, payload));
  EXPECT_EQ(owner_.returned, (std::vector<int>{0, 1, 2}));  // dropped at once
  bool idle = false;
  queue().on_idle([&] { idle = true; });
  transport_.shutdown();
  run();
  EXPECT_TRUE(idle);
  EXPECT_FALSE(queue().busy());
  EXPECT_TRUE(transport_.wire.empty());
  EXPECT_TRUE(failures_.empty());
}

TEST_F(WriteQueueTest, WriteErrorIsReportedOnceAndDropsNothingSilently) {
  transport_.error = Error{std::make_error_code(std::errc::connection_reset), "send failed: reset"};
  const Bytes payload = bytes(10, 0);
  queue().push(BufferLease(owner_, 0, payload));
  ASSERT_TRUE(queue().push(payload));
  run();
  ASSERT_EQ(failures_.size(), 1u);
  EXPECT_EQ(failures_[0], "send failed: reset");
  // The owner of the queue closes it on failure; the lease then returns.
  queue().close();
  EXPECT_EQ(owner_.returned, std::vector<int>{0});
}

TEST_F(WriteQueueTest, BytesTheTransportHoldsAreFlushedWithNothingQueued) {
  transport_.holds = true;
  transport_.room = 0;
  const Bytes a = bytes(100, 0);
  queue().push(BufferLease(owner_, 0, a));
  run();
  // The transport took the lease (it returns) but holds its bytes: the queue waits for them.
  EXPECT_EQ(owner_.returned, std::vector<int>{0});
  EXPECT_TRUE(queue().empty());
  EXPECT_TRUE(queue().busy());
  EXPECT_EQ(transport_.waits, 1);
  transport_.make_room(30);
  run();
  // 30 bytes per flush: it keeps flushing until none are held.
  EXPECT_EQ(transport_.wire, a);
  EXPECT_GE(transport_.flushes, 4);
  EXPECT_FALSE(queue().busy());
  EXPECT_FALSE(transport_.has_pending_output());
  EXPECT_TRUE(failures_.empty());
}

TEST_F(WriteQueueTest, HeldBytesGoOutBeforeLaterItemsAndCloseEndsTheWait) {
  transport_.holds = true;
  transport_.room = 0;
  const Bytes a = bytes(10, 0), b = bytes(10, 50);
  ASSERT_TRUE(queue().push(a));
  run();
  ASSERT_TRUE(queue().push(b));  // queued during the wait for a's held bytes
  run();
  EXPECT_TRUE(queue().busy());
  transport_.make_room(std::numeric_limits<std::size_t>::max());
  run();
  Bytes expected = a;
  expected.insert(expected.end(), b.begin(), b.end());
  EXPECT_EQ(transport_.wire, expected);
  EXPECT_FALSE(queue().busy());

  // A wait for held bytes still in flight at close() ends through on_idle like any other.
  transport_.room = 0;
  ASSERT_TRUE(queue().push(a));
  run();
  ASSERT_TRUE(queue().busy());
  bool idle = false;
  queue().on_idle([&] { idle = true; });
  queue().close();
  transport_.shutdown();
  run();
  EXPECT_TRUE(idle);
  EXPECT_FALSE(queue().busy());
}

}  // namespace
}  // namespace nbdtunnel::tunnel

namespace nbdtunnel::tunnel {
namespace {

class RetainingQueueTest : public WriteQueueTest {
 protected:
  // Retained leases return while their owner (destroyed before the queue) still lives, as a
  // channel closes its queue before its streams go.
  void TearDown() override { queue().close(); }
  ScriptedTransport second_{ring_};
};

TEST_F(RetainingQueueTest, AcknowledgedItemsAreReleasedAndOthersKept) {
  queue().retain();
  const Bytes a = bytes(10, 0), b = bytes(20, 100);
  queue().push(BufferLease(owner_, 0, a));
  queue().push(BufferLease(owner_, 1, b));
  run();
  EXPECT_EQ(transport_.wire.size(), 30u);
  EXPECT_TRUE(owner_.returned.empty());  // written, but kept for the peer
  EXPECT_EQ(queue().unacknowledged(), 30u);
  ASSERT_TRUE(queue().ack(15));  // inside b: only a goes
  EXPECT_EQ(owner_.returned, std::vector<int>({0}));
  ASSERT_TRUE(queue().ack(30));
  EXPECT_EQ(owner_.returned, std::vector<int>({0, 1}));
  EXPECT_FALSE(queue().ack(31));  // more than was sent
}

TEST_F(RetainingQueueTest, AttachSendsFirstThenEverythingPastWhatThePeerReceived) {
  queue().retain();
  const Bytes a = bytes(10, 0), b = bytes(20, 100), c = bytes(5, 200);
  queue().push(BufferLease(owner_, 0, a));
  ASSERT_TRUE(queue().push(b));
  run();
  queue().detach();
  queue().push(BufferLease(owner_, 2, c));  // queued while detached: not written anywhere
  run();
  EXPECT_EQ(transport_.wire.size(), 30u);
  const Bytes first = bytes(3, 50);
  ASSERT_TRUE(queue().attach(second_, 12, first));
  run();
  Bytes expect = first;
  expect.insert(expect.end(), b.begin() + 2, b.end());
  expect.insert(expect.end(), c.begin(), c.end());
  EXPECT_EQ(second_.wire, expect);
  EXPECT_EQ(owner_.returned, std::vector<int>({0}));  // a was acknowledged by the attach
  EXPECT_EQ(queue().sent(), 35u);
}

TEST_F(RetainingQueueTest, AttachFromAPartlyWrittenItem) {
  queue().retain();
  const Bytes a = bytes(40, 0);
  transport_.room = 25;
  queue().push(BufferLease(owner_, 0, a));
  run();
  queue().detach();
  ASSERT_TRUE(queue().attach(second_, 20));
  run();
  EXPECT_EQ(second_.wire, Bytes(a.begin() + 20, a.end()));
}

TEST_F(RetainingQueueTest, AttachRefusesACountOutsideWhatIsKept) {
  queue().retain();
  const Bytes a = bytes(10, 0), b = bytes(10, 10);
  queue().push(BufferLease(owner_, 0, a));
  queue().push(BufferLease(owner_, 1, b));
  run();
  ASSERT_TRUE(queue().ack(10));
  queue().detach();
  EXPECT_FALSE(queue().attach(second_, 5));   // acknowledged before: no longer kept
  EXPECT_FALSE(queue().attach(second_, 21));  // never sent
  ASSERT_TRUE(queue().attach(second_, 20));
  run();
  EXPECT_TRUE(second_.wire.empty());
}

TEST_F(RetainingQueueTest, AWriteErrorDetachesInsteadOfClosing) {
  queue().retain();
  transport_.error = system_error(ECONNRESET, "send failed");
  const Bytes a = bytes(10, 0);
  queue().push(BufferLease(owner_, 0, a));
  run();
  ASSERT_EQ(failures_.size(), 1u);
  EXPECT_TRUE(owner_.returned.empty());  // kept for the next connection
  ASSERT_TRUE(queue().attach(second_, 0));
  run();
  EXPECT_EQ(second_.wire, a);
}

}  // namespace
}  // namespace nbdtunnel::tunnel
