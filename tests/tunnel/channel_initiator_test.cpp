// Channel as initiator (the source side), driven by a raw peer over a socketpair: HELLO, calls
// and their replies, calls failed on close, and streams opened from local connections. Every
// test runs in both copy modes.

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <future>
#include <mutex>
#include <thread>

#include "raw_peer.hpp"
#include "tunnel/channel.hpp"
#include "tunnel/socket_transport.hpp"

namespace nbdtunnel::tunnel {
namespace {

using namespace std::chrono_literals;
using testing::Bytes;
using testing::hdr;
using testing::Packet;

constexpr std::uint32_t kOpen = static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel);

struct Reply {
  PacketHeader h;
  Bytes body;
};

class InitiatorTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    peer_ = testing::RawPeer(unique_fd(fds[1]));
    ChannelConfig config;
    config.window = kMinWindow;
    config.splice = GetParam();
    config.handshake_timeout = 3s;
    ChannelEvents events;
    events.on_ready = [this](const Hello& h) {
      std::lock_guard lock(mu_);
      ready_host_ = h.hostname;
    };
    events.on_closed = [this](Channel&, const std::string&) { closed_ = true; };
    channel_ = std::make_unique<Channel>(
        io_, ring_, std::make_unique<SocketTransport>(ring_, unique_fd(fds[0])),
        Channel::Role::initiator, "test-dest", config, events);
    on_io([this] { channel_->start(); });
    thread_ = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io_);
      io_.run();
    });
  }

  void TearDown() override {
    on_io([this] { channel_->close("test finished"); });
    for (int i = 0; i < 500 && !closed_; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(closed_) << "on_closed never came";
    io_.stop();
    thread_.join();
    channel_.reset();
  }

  // Runs f on the channel's thread (before the thread starts: right away).
  void on_io(std::function<void()> f) {
    if (!thread_.joinable()) {
      f();
      return;
    }
    std::promise<void> done;
    boost::asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

  // Reads the channel's HELLO call and answers it.
  void handshake() {
    auto call = peer_.read_packet();
    ASSERT_TRUE(call);
    ASSERT_EQ(call->h.type, static_cast<std::uint32_t>(PacketType::call));
    ASSERT_EQ(call->h.procedure, static_cast<std::uint32_t>(Proc::hello));
    hello_serial_ = call->h.serial;
    Result<Hello> theirs = decode_hello(call->body);
    ASSERT_TRUE(theirs) << theirs.error().message;
    EXPECT_EQ(theirs->window, kMinWindow);
    Hello ours;
    ours.hostname = "dest-host";
    ours.window = kMinWindow;
    ours.max_payload = kMinWindow;
    Bytes body;
    encode_hello(body, ours);
    ASSERT_TRUE(peer_.send(hdr(1, PacketType::reply, call->h.serial), body));
    for (int i = 0; i < 300 && !ready(); ++i) std::this_thread::sleep_for(10ms);
    ASSERT_TRUE(ready());
  }

  bool ready() {
    bool r = false;
    on_io([&] { r = channel_->ready(); });
    return r;
  }

  // Sends a call from the channel; its reply lands in replies_.
  void call(std::uint32_t proc, Bytes body) {
    on_io([this, proc, body] {
      channel_->call(proc, body, [this](const PacketHeader& h, std::span<const std::uint8_t> b) {
        std::lock_guard lock(mu_);
        replies_.push_back(Reply{h, Bytes(b.begin(), b.end())});
      });
    });
  }

  std::optional<Reply> wait_reply() {
    for (int i = 0; i < 300; ++i) {
      {
        std::lock_guard lock(mu_);
        if (!replies_.empty()) return replies_.front();
      }
      std::this_thread::sleep_for(10ms);
    }
    return std::nullopt;
  }

  // A local connection whose far end (returned) the test plays, opened as a stream to target.
  unique_fd open_local_stream(const std::string& target) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    unique_fd local(fds[0]);
    on_io([&] { channel_->open_stream(std::move(local), target, "test-conn"); });
    return unique_fd(fds[1]);
  }

  // Reads what the channel sends until n STREAM payload bytes of serial arrived.
  Bytes read_payload(std::uint32_t serial, std::size_t n) {
    Bytes got;
    while (got.size() < n) {
      auto p = peer_.read_packet();
      if (!p) break;
      if (p->h.type != static_cast<std::uint32_t>(PacketType::stream)) continue;
      EXPECT_EQ(p->h.serial, serial);
      EXPECT_EQ(p->h.status, static_cast<std::uint32_t>(PacketStatus::cont));
      got.insert(got.end(), p->body.begin(), p->body.end());
    }
    return got;
  }

  static bool sees_eof(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 3000) <= 0) return false;
    char c;
    return ::recv(fd, &c, 1, 0) == 0;
  }

  boost::asio::io_context io_;
  Ring ring_{io_};
  std::unique_ptr<Channel> channel_;
  std::thread thread_;
  testing::RawPeer peer_;
  std::uint32_t hello_serial_ = 0;
  std::mutex mu_;
  std::string ready_host_;
  std::vector<Reply> replies_;
  std::atomic<bool> closed_{false};
};

TEST_P(InitiatorTest, SendsHelloFirstAndIsReadyOnTheReply) {
  EXPECT_FALSE(ready());
  handshake();
  std::lock_guard lock(mu_);
  EXPECT_EQ(ready_host_, "dest-host");
}

TEST_P(InitiatorTest, CallGetsItsReply) {
  handshake();
  call(77, Bytes{1, 2, 3, 4});
  auto seen = peer_.read_packet();
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->h.type, static_cast<std::uint32_t>(PacketType::call));
  EXPECT_EQ(seen->h.procedure, 77u);
  EXPECT_GT(seen->h.serial, hello_serial_);
  EXPECT_EQ(seen->body, (Bytes{1, 2, 3, 4}));
  ASSERT_TRUE(peer_.send(hdr(77, PacketType::reply, seen->h.serial), Bytes{9, 9, 9, 9}));
  auto reply = wait_reply();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->h.status, static_cast<std::uint32_t>(PacketStatus::ok));
  EXPECT_EQ(reply->h.serial, seen->h.serial);
  EXPECT_EQ(reply->body, (Bytes{9, 9, 9, 9}));
}

TEST_P(InitiatorTest, PendingCallFailsWhenThePeerGoesAway) {
  handshake();
  call(77, {});
  ASSERT_TRUE(peer_.read_packet());
  peer_ = testing::RawPeer();  // closes the peer's end
  auto reply = wait_reply();
  ASSERT_TRUE(reply) << "the pending call was never failed";
  EXPECT_EQ(reply->h.status, static_cast<std::uint32_t>(PacketStatus::error));
  Result<RemoteError> e = decode_remote_error(reply->body);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, static_cast<int>(ErrorCode::shutdown));
  EXPECT_NE(e->message.value_or("").find("channel closed: peer closed the connection"),
            std::string::npos)
      << e->message.value_or("");
}

TEST_P(InitiatorTest, CallOnAClosedChannelFailsAtOnce) {
  handshake();
  on_io([this] { channel_->close("closed by the test"); });
  call(77, {});
  auto reply = wait_reply();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->h.status, static_cast<std::uint32_t>(PacketStatus::error));
  Result<RemoteError> e = decode_remote_error(reply->body);
  ASSERT_TRUE(e);
  EXPECT_NE(e->message.value_or("").find("closed by the test"), std::string::npos);
}

TEST_P(InitiatorTest, OpenStreamCarriesBytesBothWays) {
  handshake();
  unique_fd far = open_local_stream("nbd");
  auto open = peer_.read_packet();
  ASSERT_TRUE(open);
  ASSERT_EQ(open->h.type, static_cast<std::uint32_t>(PacketType::call));
  ASSERT_EQ(open->h.procedure, kOpen);
  Result<OpenTunnel> target = decode_open_tunnel(open->body);
  ASSERT_TRUE(target);
  EXPECT_EQ(target->target, "nbd");
  const std::uint32_t serial = open->h.serial;
  ASSERT_TRUE(peer_.send(hdr(kOpen, PacketType::reply, serial)));

  const Bytes up(40000, 0x11);
  ASSERT_EQ(::send(far.get(), up.data(), up.size(), MSG_NOSIGNAL), static_cast<ssize_t>(up.size()));
  EXPECT_EQ(read_payload(serial, up.size()), up);

  const Bytes down(30000, 0x22);
  ASSERT_TRUE(peer_.send(hdr(kOpen, PacketType::stream, serial, PacketStatus::cont), down));
  Bytes got(down.size());
  std::size_t have = 0;
  while (have < got.size()) {
    pollfd p{far.get(), POLLIN, 0};
    ASSERT_GT(::poll(&p, 1, 3000), 0) << "stalled at " << have;
    const ssize_t n = ::recv(far.get(), got.data() + have, got.size() - have, 0);
    ASSERT_GT(n, 0);
    have += static_cast<std::size_t>(n);
  }
  EXPECT_EQ(got, down);
}

TEST_P(InitiatorTest, RefusedOpenClosesTheLocalConnection) {
  handshake();
  unique_fd far = open_local_stream("nosuch");
  auto open = peer_.read_packet();
  ASSERT_TRUE(open);
  Bytes body;
  encode_remote_error(body, make_error(ErrorCode::unknown_target, "unknown target 'nosuch'"));
  ASSERT_TRUE(peer_.send(hdr(kOpen, PacketType::reply, open->h.serial, PacketStatus::error), body));
  EXPECT_TRUE(sees_eof(far.get()));
}

TEST_P(InitiatorTest, ConnectionBeforeTheChannelIsReadyIsClosed) {
  unique_fd far = open_local_stream("nbd");
  EXPECT_TRUE(sees_eof(far.get()));
}

INSTANTIATE_TEST_SUITE_P(CopyModes, InitiatorTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return std::string(param.param ? "splice" : "copy");
                         });

}  // namespace
}  // namespace nbdtunnel::tunnel
