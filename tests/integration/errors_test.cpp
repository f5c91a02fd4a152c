// Fault tests: each one is named after the fault it injects, and checks both the refusal and
// that the daemons keep serving afterwards.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <vector>

#include "nbd/nbd_client.hpp"
#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/nbd_servers.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/sockets.hpp"
#include "tests/integration/harness/temp_dir.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/integration/harness/within.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kExportSize = 8 << 20;
constexpr Seconds kShort{5};

class TunnelFaultTest : public ::testing::Test {
 protected:
  void SetUp() override { NBDTUNNEL_REQUIRE_TOOLS("nbdkit"); }

  // Starts the NBD server the dest's "nbd" target points at.
  void start_target() { target_.emplace(start_nbdkit_memory(dir_, target_sock_, kExportSize)); }

  // One full NBD session through `socket`: handshake, write, read back.
  ::testing::AssertionResult stream_works(const std::string& socket, std::uint64_t seed = 1) {
    return within(Seconds(20), "NBD session through " + socket, [&] {
      try {
        auto client = nbd::NbdClient::connect_unix(socket, "");
        auto data = random_bytes(256 << 10, seed);
        client.pwrite(data, 1 << 20);
        std::vector<std::byte> back(data.size());
        client.pread(back, 1 << 20);
        client.shutdown();
        if (back != data) return ::testing::AssertionFailure() << "data read back differs";
        return ::testing::AssertionSuccess();
      } catch (const std::exception& e) {
        return ::testing::AssertionFailure() << e.what();
      }
    });
  }

  TempDir dir_;
  std::string target_sock_ = dir_.file("target.sock");
  std::string local_sock_ = dir_.file("local.sock");
  std::optional<Process> target_;
};

TEST_F(TunnelFaultTest, UnknownTargetIsRefused) {
  start_target();
  auto dest = start_dest(dir_, {"nbd=" + target_sock_});
  const std::string good_sock = dir_.file("good.sock");
  auto source = start_source(dir_, dest.port, {local_sock_ + "=nosuch", good_sock + "=nbd"});

  auto local = RawSocket::connect_unix(local_sock_);
  EXPECT_TRUE(local.wait_closed(kShort)) << "the source kept a refused stream's connection open";
  EXPECT_TRUE(source.wait_for_log(
      "refused.*unknown target 'nosuch'|unknown target 'nosuch'.*refused", kShort))
      << "no 'refused ... unknown target' line in the source log";

  EXPECT_TRUE(stream_works(good_sock)) << "a good stream failed after a refused one";
  EXPECT_EQ(source.count_in_log("channel connected to"), 1U) << "the channel was re-established";
}

TEST_F(TunnelFaultTest, AbsentTargetPathIsRefused) {
  auto dest = start_dest(dir_, {"nbd=" + target_sock_});  // nothing listens there yet
  auto source = start_source(dir_, dest.port, {local_sock_ + "=nbd"});

  const bool connected = within(Seconds(20), "NBD connect to an absent target", [&] {
    try {
      nbd::NbdClient::connect_unix(local_sock_, "");
      return true;
    } catch (const std::runtime_error&) {
      return false;
    }
  });
  EXPECT_FALSE(connected) << "an NBD handshake succeeded with no target listening";
  auto line = source.wait_for_log(
      "refused.*(" + regex_escape(target_sock_) + "|No such file|Connection refused)", kShort);
  EXPECT_TRUE(line) << "no 'refused' line naming the path or the reason in the source log";

  // The target appears later: a new stream on the same channel works.
  start_target();
  EXPECT_TRUE(stream_works(local_sock_));
  EXPECT_EQ(source.count_in_log("channel connected to"), 1U) << "the channel was re-established";
}

// The dest dies: the source keeps the channel (and its local connection) while it tries to
// resume it; the restarted dest does not know the channel and refuses, so the source closes the
// local connection, says why, and opens a new channel that works.
TEST_F(TunnelFaultTest, DestRestartedRefusesResumeAndTheSourceStartsOver) {
  start_target();
  auto dest = start_dest(dir_, {"nbd=" + target_sock_});
  const int port = dest.port;
  auto source = start_source(dir_, port, {local_sock_ + "=nbd"});

  // An open stream: the NBD greeting from nbdkit has come through the tunnel.
  auto local = RawSocket::connect_unix(local_sock_);
  ASSERT_TRUE(local.read_exact(8, kShort).value_or("") == "NBDMAGIC")
      << "no NBD greeting through the tunnel";

  const std::size_t mark = source.log_mark();
  dest.process.signal(SIGKILL);
  ASSERT_TRUE(dest.process.wait_exit(kShort));
  EXPECT_TRUE(
      source.wait_for_log("connection to [^\\s]+ lost .*reconnecting to resume", kShort, mark))
      << "no 'lost ... reconnecting to resume' line";
  EXPECT_FALSE(local.wait_closed(Seconds(1))) << "the local connection closed while resuming";

  auto dest2 = start_dest(dir_, {"nbd=" + target_sock_}, {}, port, "dest2");
  EXPECT_TRUE(
      source.wait_for_log("channel lost .*not resumed: the destination refused", kShort, mark))
      << "no line saying the restarted dest refused to resume the channel";
  EXPECT_TRUE(local.wait_closed(kShort)) << "a local connection stayed open after the refusal";
  EXPECT_TRUE(source.wait_for_log("channel connected to", Seconds(30), mark))
      << "the source did not connect a new channel to the new dest on port " << port;
  EXPECT_TRUE(stream_works(local_sock_, 2));
}

// With resume turned off on the dest, a lost channel closes its local connections at once and
// the source reconnects with backoff, as before resume existed.
TEST_F(TunnelFaultTest, WithoutResumeAChannelLostClosesLocalAndReconnects) {
  start_target();
  auto dest = start_dest(dir_, {"nbd=" + target_sock_}, {"--resume-timeout", "0"});
  const int port = dest.port;
  auto source = start_source(dir_, port, {local_sock_ + "=nbd"});
  auto local = RawSocket::connect_unix(local_sock_);
  ASSERT_TRUE(local.read_exact(8, kShort).value_or("") == "NBDMAGIC")
      << "no NBD greeting through the tunnel";

  const std::size_t mark = source.log_mark();
  dest.process.signal(SIGKILL);
  ASSERT_TRUE(dest.process.wait_exit(kShort));
  EXPECT_TRUE(source.wait_for_log("channel lost", kShort, mark)) << "no 'channel lost' line";
  EXPECT_TRUE(local.wait_closed(kShort)) << "a local connection stayed open after channel loss";
  EXPECT_TRUE(source.wait_for_log("reconnecting", kShort, mark)) << "no 'reconnecting' line";

  auto dest2 = start_dest(dir_, {"nbd=" + target_sock_}, {"--resume-timeout", "0"}, port, "dest2");
  EXPECT_TRUE(source.wait_for_log("channel connected to", Seconds(30), mark))
      << "the source did not reconnect to a new dest on port " << port;
  EXPECT_TRUE(stream_works(local_sock_, 2));
}

TEST_F(TunnelFaultTest, GarbageOnDestPortIsDropped) {
  start_target();
  auto dest = start_dest(dir_, {"nbd=" + target_sock_}, {"--handshake-timeout", "3"});

  auto garbage = random_bytes(4096, 0xbad);
  garbage[0] = std::byte{0xde};  // an absurd packet length whatever the rest says
  auto peer = RawSocket::connect_tcp("127.0.0.1", dest.port);
  peer.send_all(garbage);  // the dest may reset us mid-way: fine
  EXPECT_TRUE(peer.wait_closed(kShort)) << "the dest kept a connection that sent garbage";
  EXPECT_TRUE(dest.process.running()) << "the dest died on garbage";

  auto source = start_source(dir_, dest.port, {local_sock_ + "=nbd"});
  EXPECT_TRUE(stream_works(local_sock_));
}

TEST_F(TunnelFaultTest, StalledPeerOnDestPortIsDropped) {
  start_target();
  auto dest = start_dest(dir_, {"nbd=" + target_sock_}, {"--handshake-timeout", "1"});

  const auto start = std::chrono::steady_clock::now();
  auto silent = RawSocket::connect_tcp("127.0.0.1", dest.port);
  EXPECT_TRUE(silent.wait_closed(kShort)) << "a silent peer was kept beyond the timeout";
  const Seconds took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took.count(), 0.5) << "dropped before the handshake timeout could have expired";

  auto source = start_source(dir_, dest.port, {local_sock_ + "=nbd"});
  EXPECT_TRUE(stream_works(local_sock_));
}

TEST_F(TunnelFaultTest, SourceRefusesLiveSocketPath) {
  auto dest = start_dest(dir_, {"nbd=" + target_sock_});
  auto someone = RawSocket::listen_unix(local_sock_);

  Process source("source",
                 {nbdtunnel_binary(), "source", "--connect",
                  "127.0.0.1:" + std::to_string(dest.port), "--forward", local_sock_ + "=nbd"},
                 dir_.file("source.log"));
  EXPECT_EQ(source.wait_exit(kShort), 2);
  EXPECT_TRUE(source.wait_for_log(regex_escape(local_sock_), Seconds(0)))
      << "the error does not name the path";
  // The live socket must survive.
  EXPECT_NO_THROW(RawSocket::connect_unix(local_sock_));
}

TEST_F(TunnelFaultTest, SourceReplacesStaleSocketFile) {
  start_target();
  make_stale_socket(local_sock_);
  auto dest = start_dest(dir_, {"nbd=" + target_sock_});
  auto source = start_source(dir_, dest.port, {local_sock_ + "=nbd"});
  EXPECT_TRUE(stream_works(local_sock_));
}

TEST_F(TunnelFaultTest, SocketModeDefaultsTo0600) {
  auto dest = start_dest(dir_, {"nbd=" + target_sock_});
  const std::string other_sock = dir_.file("other.sock");
  auto by_default = start_source(dir_, dest.port, {local_sock_ + "=nbd"}, {}, false, "source");
  auto group = start_source(dir_, dest.port, {other_sock + "=nbd"}, {"--socket-mode", "0660"},
                            false, "source-0660");

  struct stat st {};
  ASSERT_EQ(::stat(local_sock_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600U) << std::oct << (st.st_mode & 07777);
  ASSERT_EQ(::stat(other_sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660U) << std::oct << (st.st_mode & 07777);
}

// Both roles, with a live channel and an open stream, exit 0 on `sig`.
void expect_clean_exit_on(int sig) {
  TempDir dir;
  auto target = start_nbdkit_memory(dir, dir.file("target.sock"), kExportSize);
  auto dest = start_dest(dir, {"nbd=" + dir.file("target.sock")});
  auto source = start_source(dir, dest.port, {dir.file("local.sock") + "=nbd"});
  auto local = RawSocket::connect_unix(dir.file("local.sock"));
  ASSERT_TRUE(local.read_exact(8, kShort)) << "no NBD greeting through the tunnel";

  source.signal(sig);
  EXPECT_EQ(source.wait_exit(kShort), 0) << "source on signal " << sig;
  dest.process.signal(sig);
  EXPECT_EQ(dest.process.wait_exit(kShort), 0) << "dest on signal " << sig;
}

TEST_F(TunnelFaultTest, SigtermExitsZero) {
  expect_clean_exit_on(SIGTERM);
}

TEST_F(TunnelFaultTest, SigintExitsZero) {
  expect_clean_exit_on(SIGINT);
}

}  // namespace
}  // namespace nbdtunnel::testing
