// Bytes through two TlsTransports over real TCP: large transfers both ways at once with small
// and large iovecs and partial reads, byte-exact; and no plaintext on the wire.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tls_fixture.hpp"
#include "tunnel/tls_transport.hpp"

namespace nbdtunnel::tunnel::tlstest {
namespace {

constexpr std::size_t kPeriod = 251;  // pattern byte i is i % 251

// Writes `total` patterned bytes through a transport as fast as it takes them, gathering
// pieces of varied sizes, then flushes what the transport still holds.
class Writer {
 public:
  Writer(Transport& t, std::uint64_t total) : t_(t), total_(total), pattern_(kPeriod * 4200) {
    for (std::size_t i = 0; i < pattern_.size(); ++i)
      pattern_[i] = static_cast<std::uint8_t>(i % kPeriod);
    op_.set_handler([this](int res, std::uint32_t) {
      if (res < 0 && res != -ECANCELED) failure = "wait failed";
      pump();
    });
  }
  void pump() {
    static constexpr std::size_t kSizes[] = {1, 7, 100, 3000, 20'000, 70'000, 300'000, 5};
    while (failure.empty()) {
      Result<std::size_t> n = std::size_t{0};
      if (sent_ < total_) {
        std::vector<iovec> iov;
        std::uint64_t at = sent_;
        for (int i = 0; i < 8 && at < total_; ++i) {
          std::size_t len = std::min<std::uint64_t>(kSizes[turn_++ % 8], total_ - at);
          len = std::min(len, pattern_.size() - kPeriod);
          iov.push_back(iovec{pattern_.data() + at % kPeriod, len});
          at += len;
        }
        n = t_.write(iov, false);
      } else if (t_.has_pending_output()) {
        n = t_.flush_pending();
      } else {
        done = true;
        return;
      }
      if (!n) {
        if (!would_block(n.error())) {
          failure = n.error().message;
          return;
        }
        t_.wait_writable(op_);
        return;
      }
      if (sent_ < total_) sent_ += *n;
    }
  }
  bool busy() const { return op_.busy(); }
  bool done = false;
  std::string failure;

 private:
  Transport& t_;
  std::uint64_t total_, sent_ = 0;
  std::vector<std::uint8_t> pattern_;
  std::size_t turn_ = 0;
  Op op_;
};

// Reads until `total` bytes have come, in reads of varied sizes, checking every byte.
class Reader {
 public:
  Reader(Transport& t, std::uint64_t total) : t_(t), total_(total), buf_(1u << 20) {
    op_.set_handler([this](int res, std::uint32_t) {
      if (res < 0 && res != -ECANCELED) failure = "wait failed";
      pump();
    });
  }
  void pump() {
    static constexpr std::size_t kSizes[] = {1, 13, 4096, 65'536, 1u << 20, 100};
    while (failure.empty() && received < total_) {
      const std::size_t want = std::min<std::uint64_t>(kSizes[turn_++ % 6], total_ - received);
      Result<std::size_t> n = t_.read(std::span(buf_.data(), want));
      if (!n) {
        if (!would_block(n.error())) {
          failure = n.error().message;
          return;
        }
        t_.wait_readable(op_);
        return;
      }
      if (*n == 0) {
        failure = "end of data after " + std::to_string(received) + " bytes";
        return;
      }
      for (std::size_t i = 0; i < *n; ++i) {
        if (buf_[i] != static_cast<std::uint8_t>((received + i) % kPeriod)) {
          failure = "byte " + std::to_string(received + i) + " differs";
          return;
        }
      }
      received += *n;
    }
  }
  bool busy() const { return op_.busy(); }
  std::uint64_t received = 0;
  std::string failure;

 private:
  Transport& t_;
  std::uint64_t total_;
  std::vector<std::uint8_t> buf_;
  std::size_t turn_ = 0;
  Op op_;
};

class TlsDataTest : public TlsFixture {};

TEST_F(TlsDataTest, SixtyFourMiBEachWayAtOnceArriveByteExact) {
  HandshakeSide client, server;
  handshake_pair(client, server);
  ASSERT_TRUE(client.ok() && server.ok()) << client.error() << server.error();
  constexpr std::uint64_t kTotal = 64u << 20;
  Writer cw(client.transport(), kTotal), sw(server.transport(), kTotal);
  Reader cr(client.transport(), kTotal), sr(server.transport(), kTotal);
  cw.pump();
  sw.pump();
  cr.pump();
  sr.pump();
  auto finished = [&] {
    const bool failed =
        !cw.failure.empty() || !sw.failure.empty() || !cr.failure.empty() || !sr.failure.empty();
    return failed || (cw.done && sw.done && cr.received == kTotal && sr.received == kTotal);
  };
  EXPECT_TRUE(run_until(finished, 100s));
  EXPECT_EQ(cw.failure, "");
  EXPECT_EQ(sw.failure, "");
  EXPECT_EQ(cr.failure, "");
  EXPECT_EQ(sr.failure, "");
  EXPECT_EQ(cr.received, kTotal);
  EXPECT_EQ(sr.received, kTotal);

  // close_notify: the peer reads a clean end, and every wait in flight completes.
  client.transport().shutdown();
  std::vector<std::uint8_t> buf(64);
  Result<std::size_t> end = read_once(server.transport(), buf);
  ASSERT_TRUE(end) << end.error().message;
  EXPECT_EQ(*end, 0u);
  server.transport().shutdown();
  EXPECT_TRUE(run_until([&] { return !cw.busy() && !sw.busy() && !cr.busy() && !sr.busy(); }));
}

TEST_F(TlsDataTest, PeerThatClosesWithoutCloseNotifyIsATruncation) {
  HandshakeSide client, server;
  handshake_pair(client, server);
  ASSERT_TRUE(client.ok() && server.ok());
  client.result.reset();  // closes the socket with no close_notify
  std::vector<std::uint8_t> buf(64);
  Result<std::size_t> r = read_once(server.transport(), buf);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message,
              ::testing::HasSubstr("closed the connection without a TLS close_notify"));
}

// Relays a TCP connection both ways and keeps every byte it saw.
class RecordingProxy {
 public:
  RecordingProxy(unique_fd a, unique_fd b) : a_(std::move(a)), b_(std::move(b)) {
    thread_ = std::thread([this] { relay(); });
  }
  ~RecordingProxy() {
    stop_ = true;
    thread_.join();
  }
  std::string recorded() {
    std::lock_guard lock(mu_);
    return recorded_;
  }

 private:
  void relay() {
    pollfd p[2] = {{a_.get(), POLLIN, 0}, {b_.get(), POLLIN, 0}};
    char buf[65536];
    while (!stop_) {
      if (::poll(p, 2, 10) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP))) continue;
        const ssize_t n = ::recv(p[i].fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) {
          ::shutdown(p[1 - i].fd, SHUT_WR);
          p[i].fd = -1;
          continue;
        }
        {
          std::lock_guard lock(mu_);
          recorded_.append(buf, static_cast<std::size_t>(n));
        }
        for (ssize_t off = 0; off < n;) {
          const ssize_t k =
              ::send(p[1 - i].fd, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
          if (k <= 0) break;
          off += k;
        }
      }
    }
  }
  unique_fd a_, b_;
  std::mutex mu_;
  std::string recorded_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST_F(TlsDataTest, NoPlaintextOnTheWire) {
  auto [client_fd, proxy_a] = tcp_pair();
  auto [proxy_b, server_fd] = tcp_pair();
  RecordingProxy proxy(std::move(proxy_a), std::move(proxy_b));
  HandshakeSide client, server;
  start(server, std::move(server_fd), context(TlsRole::server));
  start(client, std::move(client_fd), context(TlsRole::client), "localhost");
  ASSERT_TRUE(run_until([&] { return client.done() && server.done(); }));
  ASSERT_TRUE(client.ok() && server.ok()) << client.error() << server.error();

  const std::string marker = "NBDTUNNEL-PLAINTEXT-MARKER-0123456789;";
  std::string text;
  while (text.size() < (1u << 20)) text += marker;
  std::size_t sent = 0;
  std::string got;
  std::vector<std::uint8_t> buf(1u << 16);
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (got.size() < text.size() && std::chrono::steady_clock::now() < deadline) {
    if (sent < text.size()) {
      const iovec v{text.data() + sent, text.size() - sent};
      Result<std::size_t> n = client.transport().write(std::span(&v, 1), false);
      if (n) sent += *n;
    } else if (client.transport().has_pending_output()) {
      (void)client.transport().flush_pending();
    }
    Result<std::size_t> r = server.transport().read(buf);
    if (r) got.append(reinterpret_cast<const char*>(buf.data()), *r);
    if (!r && !would_block(r.error())) FAIL() << r.error().message;
    if (!r) run_until([] { return false; }, 1ms);
  }
  ASSERT_EQ(got, text);
  const std::string wire = proxy.recorded();
  EXPECT_GT(wire.size(), text.size());
  EXPECT_EQ(wire.find("PLAINTEXT-MARKER"), std::string::npos);
  client.transport().shutdown();
  server.transport().shutdown();
}

}  // namespace
}  // namespace nbdtunnel::tunnel::tlstest
