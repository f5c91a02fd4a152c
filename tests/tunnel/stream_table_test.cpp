// StreamTable: serials, the opening rules, lookup and reaping after the completion batch.

#include "tunnel/stream_table.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <vector>

namespace nbdtunnel::tunnel {
namespace {

using namespace std::chrono_literals;

// A link that records what its streams ask; these tests never start a stream.
class RecordingLink final : public StreamLink {
 public:
  explicit RecordingLink(boost::asio::io_context& io) : ring_(io), poster_(ring_) {}
  Ring& ring() override { return ring_; }
  Poster& poster() override { return poster_; }
  void send_payload(BufferLease) override {}
  void send_payload(PipeLease) override {}
  void send_end_of_data(std::uint32_t) override {}
  void send_finish(std::uint32_t) override {}
  void send_error(std::uint32_t serial, const RemoteError&) override { errors.push_back(serial); }
  void grant_credit(std::uint32_t, std::uint32_t) override {}
  void connected(std::uint32_t, const Status&) override {}
  void done(std::uint32_t serial) override { done_serials.push_back(serial); }
  std::size_t take_window(std::size_t) override { return 0; }
  void return_window(std::size_t) override {}
  std::vector<std::uint32_t> errors, done_serials;

 private:
  Ring ring_;
  Poster poster_;
};

class StreamTableTest : public ::testing::Test {
 protected:
  std::unique_ptr<Stream> stream(std::uint32_t serial) {
    StreamParams params;
    params.window = kMinWindow;
    params.chunk = kMinWindow;
    return std::make_unique<Stream>(link_, serial, "target", "tag", unique_fd{}, params);
  }
  void run() {
    io_.restart();
    io_.run_for(20ms);
  }

  boost::asio::io_context io_;
  RecordingLink link_{io_};
  Poster poster_{link_.ring()};
  StreamTable table_{poster_, 2};
};

TEST_F(StreamTableTest, InitiatorSerialsGrowFromOne) {
  EXPECT_EQ(table_.next_serial(), 1u);
  EXPECT_EQ(table_.next_serial(), 2u);
  EXPECT_TRUE(table_.used(2));
  EXPECT_FALSE(table_.used(3));
  EXPECT_FALSE(table_.used(0));
}

TEST_F(StreamTableTest, ResponderRefusesSerialsThatDoNotGrow) {
  ASSERT_TRUE(table_.admit(5));
  Status same = table_.admit(5);
  ASSERT_FALSE(same);
  EXPECT_NE(same.error().message.find("stream serial 5 was already used"), std::string::npos);
  EXPECT_FALSE(table_.admit(4));
  EXPECT_TRUE(table_.admit(9));
}

TEST_F(StreamTableTest, ResponderRefusesStreamsPastTheLimit) {
  ASSERT_TRUE(table_.admit(1));
  table_.add(stream(1));
  ASSERT_TRUE(table_.admit(2));
  table_.add(stream(2));
  EXPECT_TRUE(table_.full());
  Status third = table_.admit(3);
  ASSERT_FALSE(third);
  EXPECT_EQ(third.error().code, std::errc::too_many_files_open);
  EXPECT_NE(third.error().message.find("limit 2"), std::string::npos);
  // The refused serial still counts as used: it can never be opened later.
  EXPECT_FALSE(table_.admit(3));
}

TEST_F(StreamTableTest, ReleasedStreamLeavesAtOnceAndIsReapedAfterTheBatch) {
  ASSERT_TRUE(table_.admit(1));
  Stream& s = table_.add(stream(1));
  EXPECT_EQ(table_.find(1), &s);
  bool drained = false;
  table_.on_drained([&] { drained = true; });
  table_.release(1);
  EXPECT_EQ(table_.find(1), nullptr);
  EXPECT_FALSE(table_.drained()) << "reaped inside the call that released it";
  EXPECT_TRUE(table_.used(1));
  run();
  EXPECT_TRUE(table_.drained());
  EXPECT_TRUE(drained);
  table_.release(1);  // again: harmless
  run();
}

TEST_F(StreamTableTest, OpenStreamsIsASnapshotTheCallerMayRelease) {
  for (std::uint32_t serial : {1u, 2u}) {
    ASSERT_TRUE(table_.admit(serial));
    table_.add(stream(serial));
  }
  std::vector<std::uint32_t> seen;
  for (Stream* s : table_.open_streams()) {
    seen.push_back(s->serial());
    table_.release(s->serial());
  }
  EXPECT_EQ(seen, (std::vector<std::uint32_t>{1, 2}));
  EXPECT_EQ(table_.size(), 0u);
  run();
  EXPECT_TRUE(table_.drained());
}

}  // namespace
}  // namespace nbdtunnel::tunnel
