// Channel (responder) driven by a fake peer over a socketpair: the peer speaks raw packets.
// Every test runs in both copy modes (copy, splice).

#include "tunnel/channel.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "raw_peer.hpp"
#include "tunnel/packet.hpp"
#include "tunnel/socket_transport.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::tunnel {
namespace {

using namespace std::chrono_literals;
using testing::Bytes;
using testing::hdr;
using testing::Packet;

class ChannelTest : public ::testing::TestWithParam<bool> {
 protected:
  void start(ChannelConfig config = {}) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    peer_ = testing::RawPeer(unique_fd(fds[1]));
    ChannelEvents events;
    events.resolve_target = [this](const Channel&, const std::string& name) -> Result<std::string> {
      auto it = targets_.find(name);
      if (it == targets_.end()) return input_error("unknown target '" + name + "'");
      return it->second;
    };
    if (hold_calls_) {
      events.on_call = [this](Channel&, const PacketHeader&, std::span<const std::uint8_t>) {
        ++held_calls_;  // never answered
      };
    }
    events.on_closed = [this](Channel&, const std::string& reason) {
      std::lock_guard lock(mu_);
      close_reason_ = reason;
      closed_ = true;
    };
    if (config.handshake_timeout == ChannelConfig{}.handshake_timeout) {
      config.handshake_timeout = 2s;
    }
    config.window = kMinWindow;
    config.splice = GetParam();
    channel_ = std::make_unique<Channel>(
        io_, ring_, std::make_unique<SocketTransport>(ring_, unique_fd(fds[0])),
        Channel::Role::responder, "test-peer", config, events);
    channel_->start();
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    if (channel_) {
      boost::asio::post(io_, [this] { channel_->close("test finished"); });
      for (int i = 0; i < 500 && !closed_; ++i) std::this_thread::sleep_for(10ms);
      io_.stop();
      thread_.join();
      channel_.reset();
    }
    for (auto& t : echo_threads_) t.join();
    std::filesystem::remove_all(dir_);
  }

  void send(PacketHeader h, const Bytes& body = {}) { ASSERT_TRUE(peer_.send(h, body)); }
  void send_raw(const Bytes& bytes) { peer_.send_raw(bytes); }
  std::optional<Packet> read_packet(std::chrono::milliseconds timeout = 3s) {
    return peer_.read_packet(timeout);
  }

  // Reads until a packet that is not a credit message (credits are collected).
  std::optional<Packet> read_non_credit(std::chrono::milliseconds timeout = 3s) {
    for (;;) {
      auto p = read_packet(timeout);
      if (!p || p->h.procedure != static_cast<std::uint32_t>(Proc::stream_credit) ||
          p->h.type != static_cast<std::uint32_t>(PacketType::message)) {
        return p;
      }
      Result<std::uint32_t> n = decode_credit(p->body);
      EXPECT_TRUE(n);
      if (n) credits_ += *n;
    }
  }

  bool peer_sees_eof(std::chrono::milliseconds timeout) { return peer_.sees_eof(timeout); }

  std::uint64_t echo_on_credit(std::size_t size, std::chrono::milliseconds delay,
                               bool split_payloads = false);
  std::uint64_t credit_over_a_long_link(std::chrono::milliseconds delay, int round_trips,
                                        std::size_t bytes_per_ms = 0);

  void hello() {
    Hello h;
    h.host_id = "peer-id";
    h.hostname = "peer";
    h.window = kMinWindow;
    h.max_payload = kMinWindow;
    Bytes body;
    encode_hello(body, h);
    send(hdr(1, PacketType::call, 1), body);
    auto reply = read_packet();
    ASSERT_TRUE(reply);
    ASSERT_EQ(reply->h.type, static_cast<std::uint32_t>(PacketType::reply));
    ASSERT_EQ(reply->h.status, 0u);
    ASSERT_EQ(reply->h.serial, 1u);
    hello_reply_ = reply->body;
  }

  RemoteError expect_error(const std::optional<Packet>& p, PacketType type, std::uint32_t serial) {
    RemoteError e;
    EXPECT_TRUE(p);
    if (!p) return e;
    EXPECT_EQ(p->h.type, static_cast<std::uint32_t>(type));
    EXPECT_EQ(p->h.status, static_cast<std::uint32_t>(PacketStatus::error));
    EXPECT_EQ(p->h.serial, serial);
    Result<RemoteError> decoded = decode_remote_error(p->body);
    EXPECT_TRUE(decoded) << decoded.error().message;
    return decoded ? *decoded : e;
  }

  void expect_alive() {
    send(hdr(1, PacketType::message, 0, PacketStatus::ok, kKeepaliveProgram));
    auto pong = read_non_credit();
    ASSERT_TRUE(pong);
    EXPECT_EQ(pong->h.program, kKeepaliveProgram);
    EXPECT_EQ(pong->h.procedure, static_cast<std::uint32_t>(KeepaliveProc::pong));
  }

  std::string close_reason() {
    std::lock_guard lock(mu_);
    return close_reason_;
  }

  // A target socket dir_/NAME.sock whose one connection `serve` handles on a thread.
  std::string target(const std::string& name, std::function<void(unique_fd)> serve) {
    std::filesystem::create_directories(dir_);
    const std::string path = dir_ + "/" + name + ".sock";
    Result<unique_fd> listening = listen_unix(path, 0600);
    EXPECT_TRUE(listening) << listening.error().message;
    if (!listening) return path;
    echo_threads_.emplace_back([l = std::move(*listening), serve = std::move(serve)]() mutable {
      serve(unique_fd(::accept(l.get(), nullptr, nullptr)));
    });
    return path;
  }

  // A target that echoes everything back, then half-closes when its input ends.
  std::string echo_target() {
    return target("echo", [](unique_fd c) {
      std::uint8_t buf[65536];
      for (;;) {
        const ssize_t n = ::recv(c.get(), buf, sizeof buf, 0);
        if (n <= 0) break;
        if (::send(c.get(), buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
      }
      ::shutdown(c.get(), SHUT_WR);
      ::recv(c.get(), buf, 1, 0);
    });
  }

  // A target that reads everything and keeps nothing.
  std::string sink_target() {
    return target("sink", [](unique_fd c) {
      std::vector<std::uint8_t> buf(1 << 20);
      while (::recv(c.get(), buf.data(), buf.size(), 0) > 0) {
      }
    });
  }

  // Starts the channel, exchanges HELLO and opens stream 2 to an echo target.
  void open_echo_stream(ChannelConfig config = {}) { open_stream("echo", echo_target(), config); }

  void open_stream(const std::string& name, const std::string& path, ChannelConfig config = {}) {
    targets_[name] = path;
    start(config);
    hello();
    Bytes body;
    encode_open_tunnel(body, OpenTunnel{name, 0});
    send(hdr(2, PacketType::call, 2), body);
    auto reply = read_packet();
    ASSERT_TRUE(reply);
    ASSERT_EQ(reply->h.status, 0u);
  }

  boost::asio::io_context io_;
  Ring ring_{io_};
  std::unique_ptr<Channel> channel_;
  std::thread thread_;
  std::vector<std::thread> echo_threads_;
  testing::RawPeer peer_;
  Bytes hello_reply_;
  std::map<std::string, std::string> targets_;
  std::uint64_t credits_ = 0;
  std::string dir_ = "/tmp/nbdtunnel-channel-test-" + std::to_string(::getpid());
  std::mutex mu_;
  std::string close_reason_;
  std::atomic<bool> closed_{false};
  bool hold_calls_ = false;
  std::atomic<int> held_calls_{0};
};

TEST_P(ChannelTest, HelloReplyCarriesOurLimits) {
  ChannelConfig c;
  c.host_id = "dest-id";
  c.hostname = "dest-host";
  start(c);
  hello();
  Result<Hello> ours = decode_hello(hello_reply_);
  ASSERT_TRUE(ours) << ours.error().message;
  EXPECT_EQ(ours->version, kProgramVersion);
  EXPECT_EQ(ours->host_id, "dest-id");
  EXPECT_EQ(ours->hostname, "dest-host");
  EXPECT_EQ(ours->window, kMinWindow);  // what start() configured
  EXPECT_EQ(ours->max_payload, ChannelConfig{}.chunk);
  expect_alive();
}

TEST_P(ChannelTest, CallBeforeHelloIsRefusedAndChannelClosed) {
  start();
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{"x", 0});
  send(hdr(2, PacketType::call, 1), body);
  EXPECT_TRUE(peer_sees_eof(3s));
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("before HELLO"), std::string::npos) << close_reason();
}

// Before HELLO, nothing is served: not even a keepalive or a packet of another program.
TEST_P(ChannelTest, KeepaliveBeforeHelloClosesTheChannel) {
  ChannelConfig c;
  c.handshake_timeout = 60s;  // what closes the channel must be the packet, not the timeout
  start(c);
  send(hdr(1, PacketType::message, 0, PacketStatus::ok, kKeepaliveProgram));
  EXPECT_TRUE(peer_sees_eof(10s));
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("before HELLO"), std::string::npos) << close_reason();
}

TEST_P(ChannelTest, UnknownProgramBeforeHelloClosesTheChannel) {
  ChannelConfig c;
  c.handshake_timeout = 60s;
  start(c);
  send(hdr(1, PacketType::call, 1, PacketStatus::ok, 0x20008086));
  EXPECT_TRUE(peer_sees_eof(10s));
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("before HELLO"), std::string::npos) << close_reason();
}

// A stranger cannot make the channel buffer more than a HELLO needs.
TEST_P(ChannelTest, LargePacketBeforeHelloClosesTheChannel) {
  ChannelConfig c;
  c.handshake_timeout = 60s;
  start(c);
  // The channel may close as soon as the length is in, before all of it is written: the send
  // may fail.
  (void)peer_.send(hdr(1, PacketType::call, 1), Bytes(64 * 1024, 'x'));
  EXPECT_TRUE(peer_sees_eof(10s));
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("limit of 16384"), std::string::npos) << close_reason();
}

TEST_P(ChannelTest, IdleChannelIsClosed) {
  ChannelConfig c;
  c.keepalive_interval = 100ms;
  c.idle_timeout = 300ms;
  start(c);
  hello();
  // The peer keeps answering nothing but keepalives: that is not activity.
  EXPECT_TRUE(peer_sees_eof(10s));
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("idle"), std::string::npos) << close_reason();
}

TEST_P(ChannelTest, CallsPastTheLimitAreRefused) {
  hold_calls_ = true;
  ChannelConfig c;
  c.max_pending_calls = 4;
  start(c);
  hello();
  for (std::uint32_t serial = 10; serial < 14; ++serial) send(hdr(100, PacketType::call, serial));
  send(hdr(100, PacketType::call, 14));
  RemoteError e = expect_error(read_non_credit(), PacketType::reply, 14);
  EXPECT_EQ(e.code, static_cast<int>(ErrorCode::limit));
  EXPECT_EQ(held_calls_, 4);
  expect_alive();
}

TEST_P(ChannelTest, StreamsPastTheDaemonBudgetAreRefused) {
  targets_["echo"] = echo_target();
  auto budget = std::make_shared<StreamBudget>(1);
  ASSERT_TRUE(budget->try_acquire());  // another channel holds the only place
  ChannelConfig c;
  c.stream_budget = budget;
  start(c);
  hello();
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{"echo", 0});
  send(hdr(2, PacketType::call, 2), body);
  RemoteError e = expect_error(read_non_credit(), PacketType::reply, 2);
  EXPECT_EQ(e.code, static_cast<int>(ErrorCode::limit));
  budget->release();
  send(hdr(2, PacketType::call, 3), body);
  auto reply = read_non_credit();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->h.status, 0u);
  EXPECT_EQ(budget->used(), 1u);
  send(hdr(2, PacketType::stream, 3, PacketStatus::error));  // the peer aborts the stream
  for (int i = 0; i < 300 && budget->used() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(budget->used(), 0u);
}

TEST_P(ChannelTest, StalledPeerIsDroppedAfterHandshakeTimeout) {
  ChannelConfig c;
  c.handshake_timeout = 200ms;
  start(c);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(peer_sees_eof(5s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("no HELLO"), std::string::npos) << close_reason();
}

TEST_P(ChannelTest, GarbageClosesTheChannel) {
  start();
  const std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  send_raw(Bytes(http.begin(), http.end()));
  EXPECT_TRUE(peer_sees_eof(3s));
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("exceeds the limit"), std::string::npos) << close_reason();
}

TEST_P(ChannelTest, LengthBelowHeaderClosesTheChannel) {
  start();
  send_raw(Bytes{0, 0, 0, 5, 1, 2, 3, 4});
  EXPECT_TRUE(peer_sees_eof(3s));
  for (int i = 0; i < 100 && !closed_; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_NE(close_reason().find("shorter than"), std::string::npos) << close_reason();
}

TEST_P(ChannelTest, UnknownProgramCallGetsAnErrorReply) {
  start();
  hello();
  send(hdr(1, PacketType::call, 5, PacketStatus::ok, 0x20008086));
  RemoteError e = expect_error(read_packet(), PacketType::reply, 5);
  EXPECT_EQ(e.code, static_cast<int>(ErrorCode::unsupported));
  EXPECT_NE(e.message.value_or("").find("unknown program"), std::string::npos);
  expect_alive();
}

TEST_P(ChannelTest, UnknownProcedureGetsAnErrorReply) {
  start();
  hello();
  send(hdr(77, PacketType::call, 6));
  RemoteError e = expect_error(read_packet(), PacketType::reply, 6);
  EXPECT_NE(e.message.value_or("").find("unknown procedure 77"), std::string::npos);
  expect_alive();
}

TEST_P(ChannelTest, UnknownTypeIsDroppedAndChannelStaysUp) {
  start();
  hello();
  send(hdr(2, static_cast<PacketType>(9), 6));
  expect_alive();
}

TEST_P(ChannelTest, StreamPacketForUnknownSerialGetsAStreamError) {
  start();
  hello();
  send(hdr(2, PacketType::stream, 99, PacketStatus::cont), Bytes{1, 2, 3});
  RemoteError e = expect_error(read_packet(), PacketType::stream, 99);
  EXPECT_NE(e.message.value_or("").find("no stream with serial 99"), std::string::npos);
  expect_alive();
}

TEST_P(ChannelTest, OpenUnknownTargetIsRefused) {
  start();
  hello();
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{"nosuch", 0});
  send(hdr(2, PacketType::call, 2), body);
  RemoteError e = expect_error(read_packet(), PacketType::reply, 2);
  EXPECT_EQ(e.code, static_cast<int>(ErrorCode::unknown_target));
  EXPECT_NE(e.message.value_or("").find("nosuch"), std::string::npos);
  expect_alive();
}

TEST_P(ChannelTest, OpenAbsentTargetPathIsRefused) {
  targets_["nbd"] = "/tmp/nbdtunnel-test-no-such-socket";
  start();
  hello();
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{"nbd", 0});
  send(hdr(2, PacketType::call, 2), body);
  RemoteError e = expect_error(read_packet(), PacketType::reply, 2);
  EXPECT_EQ(e.code, static_cast<int>(ErrorCode::target_unavailable));
  EXPECT_NE(e.message.value_or("").find("No such file"), std::string::npos) << *e.message;
  expect_alive();
}

TEST_P(ChannelTest, ReusedSerialIsRefused) {
  targets_["nbd"] = "/tmp/nbdtunnel-test-no-such-socket";
  start();
  hello();
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{"nbd", 0});
  send(hdr(2, PacketType::call, 4), body);
  expect_error(read_packet(), PacketType::reply, 4);
  send(hdr(2, PacketType::call, 3), body);
  RemoteError e = expect_error(read_packet(), PacketType::reply, 3);
  EXPECT_NE(e.message.value_or("").find("already used"), std::string::npos);
}

TEST_P(ChannelTest, StreamCarriesDataBothWaysAndFinishes) {
  open_echo_stream();
  if (HasFatalFailure()) return;
  // 48 KiB fits the 64 KiB window: no credit needed before the echo returns.
  Bytes data(48 * 1024);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(i * 7);
  send(hdr(2, PacketType::stream, 2, PacketStatus::cont), data);
  Bytes echoed;
  while (echoed.size() < data.size()) {
    auto p = read_non_credit();
    ASSERT_TRUE(p) << "echo stalled at " << echoed.size() << " bytes";
    ASSERT_EQ(p->h.status, static_cast<std::uint32_t>(PacketStatus::cont));
    echoed.insert(echoed.end(), p->body.begin(), p->body.end());
  }
  // Credit for the delivered bytes may trail the echo: give it a moment to arrive.
  for (int i = 0; i < 50 && credits_ == 0; ++i) {
    send(hdr(1, PacketType::message, 0, PacketStatus::ok, kKeepaliveProgram));
    read_non_credit();
  }
  send(hdr(2, PacketType::stream, 2, PacketStatus::cont));  // end of data
  bool eof = false, finished = false;
  while (!finished) {
    auto p = read_non_credit();
    ASSERT_TRUE(p) << "stream did not finish";
    ASSERT_EQ(p->h.serial, 2u);
    ASSERT_EQ(p->h.type, static_cast<std::uint32_t>(PacketType::stream));
    if (p->h.status == static_cast<std::uint32_t>(PacketStatus::cont)) {
      if (p->body.empty()) {
        eof = true;
      } else {
        ASSERT_FALSE(eof) << "data after end-of-data";
        echoed.insert(echoed.end(), p->body.begin(), p->body.end());
      }
    } else {
      ASSERT_EQ(p->h.status, static_cast<std::uint32_t>(PacketStatus::ok));
      finished = true;
    }
  }
  EXPECT_TRUE(eof);
  EXPECT_EQ(echoed, data);
  // The responder granted credit back for what it delivered to the target.
  EXPECT_GT(credits_, 0u);
  EXPECT_LE(credits_, data.size());
  send(hdr(2, PacketType::stream, 2, PacketStatus::ok));
  expect_alive();
}

// More than the window each way, in packets of many sizes: the bytes come back intact and in
// order, and flow control (credit both ways) keeps the stream moving.
TEST_P(ChannelTest, LargeEchoFlowsOnCredit) {
  open_echo_stream();
  if (HasFatalFailure()) return;
  echo_on_credit(1u << 20, 0ms);
  expect_alive();
}

// Across a long credit loop the window grows (in splice mode past its pipe, into the ring
// behind it): the bytes still come back intact and in order.
TEST_P(ChannelTest, GrownWindowKeepsTheBytesInOrder) {
  ChannelConfig c;
  c.max_window = 8 * kMinWindow;
  open_echo_stream(c);
  if (HasFatalFailure()) return;
  EXPECT_GT(echo_on_credit(8u << 20, 5ms), 2 * kMinWindow) << "the window did not grow";
  expect_alive();
}

// The window grows while a payload is half read (in splice mode: half spliced into the pipe,
// while what comes next may go to the stream's ring): the rest of that payload still follows
// its start, whole.
TEST_P(ChannelTest, WindowGrowingMidPayloadKeepsThePayloadWhole) {
  ChannelConfig c;
  c.max_window = 8 * kMinWindow;
  open_echo_stream(c);
  if (HasFatalFailure()) return;
  const std::uint64_t most = echo_on_credit(4u << 20, 20ms, /*split_payloads=*/true);
  // (Copy mode reads whole payloads: there the cut only delays them, and the window need not
  // grow for the echo to be checked.)
  if (GetParam()) {
    EXPECT_GT(most, 2 * kMinWindow) << "the window did not grow";
  }
  expect_alive();
}

// The stream closes while its payload is half read (half spliced, in splice mode): the rest of
// the payload is dropped, the framing stays intact and the channel carries on.
TEST_P(ChannelTest, StreamClosedMidPayloadHasTheRestDiscarded) {
  open_echo_stream();
  if (HasFatalFailure()) return;
  const Bytes packet =
      make_packet(hdr(2, PacketType::stream, 2, PacketStatus::cont), Bytes(40000, 0x5a));
  const std::size_t first = kPrefixSize + 10000;
  send_raw(Bytes(packet.begin(), packet.begin() + static_cast<long>(first)));
  std::this_thread::sleep_for(100ms);  // let the reader take in what has arrived
  std::promise<void> aborted;
  boost::asio::post(io_, [&] {
    channel_->abort_streams("closed by the test");
    aborted.set_value();
  });
  aborted.get_future().wait();
  send_raw(Bytes(packet.begin() + static_cast<long>(first), packet.end()));
  // The abort reaches the peer (after any echo of the first bytes)...
  std::optional<Packet> p;
  do {
    p = read_non_credit();
    ASSERT_TRUE(p) << "no stream error after the abort";
  } while (p->h.status == static_cast<std::uint32_t>(PacketStatus::cont));
  RemoteError e = expect_error(p, PacketType::stream, 2);
  EXPECT_NE(e.message.value_or("").find("closed by the test"), std::string::npos);
  // ...and the bytes after the cut were not taken for a packet header.
  expect_alive();
  EXPECT_FALSE(closed_) << close_reason();
}

TEST_P(ChannelTest, WindowViolationAbortsOnlyThatStream) {
  open_echo_stream();
  if (HasFatalFailure()) return;
  send(hdr(2, PacketType::stream, 2, PacketStatus::cont), Bytes(kMinWindow + 1, 0x42));
  RemoteError e = expect_error(read_non_credit(), PacketType::stream, 2);
  EXPECT_EQ(e.code, static_cast<int>(ErrorCode::limit));
  EXPECT_NE(e.message.value_or("").find("window"), std::string::npos);
  expect_alive();
}

// Sends `size` bytes to the echo stream in packets of many sizes, using each grant of credit
// only `delay` after it arrives, and grants credit at once for what comes back; checks that the
// echo is what was sent. Returns the largest credit the channel let us hold at once. With
// split_payloads, each packet reaches the channel in two writes 1 ms apart, cut mid-payload.
std::uint64_t ChannelTest::echo_on_credit(std::size_t size, std::chrono::milliseconds delay,
                                          bool split_payloads) {
  Bytes data(size);
  for (std::size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<std::uint8_t>(i * 13 + i / 4096);
  std::size_t sent = 0, granted = 0;
  std::uint64_t window_left = kMinWindow, most = window_left;  // what the channel lets us send
  Bytes echoed;
  std::size_t piece = 1;
  while (echoed.size() < data.size()) {
    while (sent < data.size() && window_left > 0) {
      const std::size_t n = std::min({piece, data.size() - sent, std::size_t{window_left}});
      const Bytes payload(data.begin() + static_cast<long>(sent),
                          data.begin() + static_cast<long>(sent + n));
      if (split_payloads && n > 1) {
        const Bytes packet =
            make_packet(hdr(2, PacketType::stream, 2, PacketStatus::cont), payload);
        const auto cut = static_cast<long>(kPrefixSize + n / 2);
        send_raw(Bytes(packet.begin(), packet.begin() + cut));
        std::this_thread::sleep_for(1ms);
        send_raw(Bytes(packet.begin() + cut, packet.end()));
      } else {
        send(hdr(2, PacketType::stream, 2, PacketStatus::cont), payload);
      }
      sent += n;
      window_left -= n;
      piece = piece * 3 % 40009 + 1;  // 1 byte up to ~40 KiB
    }
    auto p = read_packet();
    EXPECT_TRUE(p) << "echo stalled at " << echoed.size() << " of " << data.size() << " bytes";
    if (!p) return most;
    if (p->h.type == static_cast<std::uint32_t>(PacketType::message)) {
      Result<std::uint32_t> n = decode_credit(p->body);
      EXPECT_TRUE(n);
      if (!n) return most;
      if (delay > 0ms) std::this_thread::sleep_for(delay);
      window_left += *n;
      most = std::max(most, window_left);
      continue;
    }
    EXPECT_EQ(p->h.type, static_cast<std::uint32_t>(PacketType::stream));
    EXPECT_EQ(p->h.status, static_cast<std::uint32_t>(PacketStatus::cont));
    EXPECT_FALSE(p->body.empty());
    if (p->h.type != static_cast<std::uint32_t>(PacketType::stream) || p->body.empty()) {
      return most;
    }
    echoed.insert(echoed.end(), p->body.begin(), p->body.end());
    // Grant the channel's stream credit for what we consumed.
    Bytes credit;
    encode_credit(credit, static_cast<std::uint32_t>(p->body.size()));
    send(hdr(static_cast<std::uint32_t>(Proc::stream_credit), PacketType::message, 2), credit);
    granted += p->body.size();
  }
  EXPECT_EQ(granted, data.size());
  EXPECT_TRUE(echoed == data) << "echoed bytes differ";
  return most;
}

// Sends to a sink as fast as credit allows, but uses each grant only `delay` after it arrives
// (a long link's round trip), for `round_trips` grants; returns the largest credit the channel
// let us hold at once (its receive window, less what was in flight). With `bytes_per_ms`, a
// round trip also lasts as long as what was sent takes at that rate: a link (or a queue) that
// a larger window does not make faster.
std::uint64_t ChannelTest::credit_over_a_long_link(std::chrono::milliseconds delay, int round_trips,
                                                   std::size_t bytes_per_ms) {
  std::uint64_t window_left = kMinWindow, most = window_left;
  const Bytes piece(16 * 1024, 0x6b);
  for (int trip = 0; trip < round_trips && !HasFatalFailure(); ++trip) {
    std::size_t sent = 0;
    while (window_left > 0) {
      const std::size_t n = std::min<std::uint64_t>(piece.size(), window_left);
      send(hdr(2, PacketType::stream, 2, PacketStatus::cont),
           Bytes(piece.begin(), piece.begin() + static_cast<long>(n)));
      window_left -= n;
      sent += n;
    }
    // Wait for credit, hold it for the round trip, then take whatever else came meanwhile.
    std::optional<Packet> p = read_packet();
    std::this_thread::sleep_for(
        bytes_per_ms ? std::max(delay, std::chrono::milliseconds(sent / bytes_per_ms)) : delay);
    for (; p; p = read_packet(1ms)) {
      EXPECT_EQ(p->h.type, static_cast<std::uint32_t>(PacketType::message)) << "not a credit";
      Result<std::uint32_t> n = decode_credit(p->body);
      EXPECT_TRUE(n);
      if (n) window_left += *n;
    }
    EXPECT_GT(window_left, 0u) << "no credit came back";
    most = std::max(most, window_left);
  }
  return most;
}

// A stream whose credit takes a round trip of several milliseconds to come back is limited by
// its window: the receiver measures that and grows the window, up to max_window.
TEST_P(ChannelTest, WindowGrowsOnALongLinkUpToItsLimit) {
  ChannelConfig c;
  c.max_window = 8 * kMinWindow;
  open_stream("sink", sink_target(), c);
  if (HasFatalFailure()) return;
  const std::uint64_t most = credit_over_a_long_link(5ms, 200);
  EXPECT_GT(most, 2 * kMinWindow) << "the window did not grow";
  EXPECT_LE(most, 8 * kMinWindow) << "the window grew past max_window";
  expect_alive();
}

// A round trip that grows with what is sent (the bytes only queue up): the window grows once
// or twice, sees no more bytes per second for it, and stops, far below max_window.
TEST_P(ChannelTest, WindowStopsGrowingWhenGrowthBringsNoMoreBytes) {
  ChannelConfig c;
  c.max_window = 16 * kMinWindow;
  open_stream("sink", sink_target(), c);
  if (HasFatalFailure()) return;
  // 64 KiB per 5 ms, however much credit there is.
  const std::uint64_t most = credit_over_a_long_link(5ms, 60, kMinWindow / 5);
  EXPECT_LE(most, 4 * kMinWindow) << "the window kept growing";
  expect_alive();
}

// With no window budget left on the channel, windows keep their first size.
TEST_P(ChannelTest, WindowDoesNotGrowPastTheChannelBudget) {
  ChannelConfig c;
  c.max_window = 8 * kMinWindow;
  c.window_budget = 0;
  open_stream("sink", sink_target(), c);
  if (HasFatalFailure()) return;
  EXPECT_EQ(credit_over_a_long_link(5ms, 40), kMinWindow);
  expect_alive();
}

// Splice mode offers a window whose pipe (twice the window) this process can really create.
TEST(SpliceWindowLimit, OffersAWindowThatFitsTwiceInAPipe) {
  const std::uint32_t limit = splice_window_limit(kMaxWindow);
  EXPECT_GE(limit, kMinWindow);
  EXPECT_LE(limit, kMaxWindow);
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  const unique_fd r(fds[0]), w(fds[1]);
  EXPECT_GE(::fcntl(w.get(), F_SETPIPE_SZ, static_cast<int>(2 * limit)),
            static_cast<int>(2 * limit));
  // A window that already fits is left alone.
  EXPECT_EQ(splice_window_limit(kMinWindow), kMinWindow);
}

INSTANTIATE_TEST_SUITE_P(CopyModes, ChannelTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return std::string(param.param ? "splice" : "copy");
                         });

}  // namespace
}  // namespace nbdtunnel::tunnel
