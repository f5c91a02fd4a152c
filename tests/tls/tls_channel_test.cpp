// Two real Channels (initiator and responder, copy mode) over TlsTransports: a stream carries
// bytes end to end through an echo target and back, byte-exact, and both channels close cleanly.

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <thread>

#include "tls_fixture.hpp"
#include "tunnel/channel.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::tunnel::tlstest {
namespace {

// Accepts one connection on a UNIX socket and echoes everything back until the end.
void echo_one(int listener) {
  pollfd p{listener, POLLIN, 0};
  if (::poll(&p, 1, 20'000) != 1) return;
  unique_fd c(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (!c) return;
  const int flags = ::fcntl(c.get(), F_GETFL);
  ::fcntl(c.get(), F_SETFL, flags & ~O_NONBLOCK);
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(c.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      const ssize_t k = ::send(c.get(), buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
      if (k <= 0) return;
      off += k;
    }
  }
}

class TlsChannelTest : public TlsFixture {};

TEST_F(TlsChannelTest, StreamCarriesBytesEndToEndOverTls) {
  HandshakeSide client, server;
  handshake_pair(client, server);
  ASSERT_TRUE(client.ok() && server.ok()) << client.error() << server.error();

  const std::string target_path = (dir_ / "echo.sock").string();
  Result<unique_fd> listener = listen_unix(target_path, 0600);
  ASSERT_TRUE(listener) << listener.error().message;
  std::thread echo([fd = listener->get()] { echo_one(fd); });

  ChannelConfig config;
  config.splice = true;  // asked for, but a TLS transport cannot: both run in copy mode
  config.window = kMinWindow;
  config.chunk = 16u << 10;
  int closed = 0;
  std::string ready_with, close_reason;
  ChannelEvents dest_events;
  dest_events.resolve_target = [&](const Channel&, const std::string& name) -> Result<std::string> {
    if (name != "echo") return input_error("unknown target '" + name + "'");
    return target_path;
  };
  dest_events.on_closed = [&](Channel&, const std::string& why) {
    ++closed;
    close_reason = why;
  };
  ChannelEvents source_events;
  source_events.on_ready = [&](const Hello& h) { ready_with = h.hostname; };
  source_events.on_closed = [&](Channel&, const std::string&) { ++closed; };
  config.hostname = "dest-host";
  auto dest = std::make_unique<Channel>(io_, ring_, std::move(server.result->value()),
                                        Channel::Role::responder, "source", config, dest_events);
  config.hostname = "source-host";
  auto source = std::make_unique<Channel>(io_, ring_, std::move(client.result->value()),
                                          Channel::Role::initiator, "dest", config, source_events);
  dest->start();
  source->start();
  ASSERT_TRUE(run_until([&] { return !ready_with.empty() || closed > 0; }));
  EXPECT_EQ(ready_with, "dest-host");

  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  unique_fd far(fds[1]);
  source->open_stream(unique_fd(fds[0]), "echo", "test");

  // The far end writes a pattern and reads the echo on threads of its own.
  constexpr std::size_t kTotal = 8u << 20;
  std::atomic<bool> writer_done{false};
  std::thread writer([&] {
    std::vector<std::uint8_t> chunk(100'003);
    std::size_t sent = 0;
    while (sent < kTotal) {
      const std::size_t n = std::min(chunk.size(), kTotal - sent);
      for (std::size_t i = 0; i < n; ++i) chunk[i] = static_cast<std::uint8_t>((sent + i) % 253);
      const ssize_t k = ::send(far.get(), chunk.data(), n, MSG_NOSIGNAL);
      if (k <= 0) break;
      sent += static_cast<std::size_t>(k);
    }
    writer_done = true;
  });
  std::atomic<std::size_t> received{0};
  std::atomic<bool> mismatch{false};
  std::thread reader([&] {
    std::vector<std::uint8_t> buf(65536);
    while (received < kTotal) {
      pollfd p{far.get(), POLLIN, 0};
      if (::poll(&p, 1, 30'000) != 1) break;
      const ssize_t k = ::recv(far.get(), buf.data(), buf.size(), 0);
      if (k <= 0) break;
      for (ssize_t i = 0; i < k; ++i) {
        if (buf[static_cast<std::size_t>(i)] != static_cast<std::uint8_t>((received + i) % 253))
          mismatch = true;
      }
      received += static_cast<std::size_t>(k);
    }
  });
  EXPECT_TRUE(run_until([&] { return received >= kTotal || closed > 0 || mismatch; }, 100s));
  ::shutdown(far.get(), SHUT_RDWR);  // ends the reader and the writer
  writer.join();
  reader.join();
  EXPECT_EQ(received.load(), kTotal);
  EXPECT_FALSE(mismatch);
  EXPECT_EQ(closed, 0) << close_reason;

  source->close("test finished");
  EXPECT_TRUE(run_until([&] { return closed == 2; }));
  EXPECT_THAT(close_reason, ::testing::Not(::testing::HasSubstr("truncated")));
  source.reset();
  dest.reset();
  ::shutdown(listener->get(), SHUT_RDWR);
  echo.join();
}

}  // namespace
}  // namespace nbdtunnel::tunnel::tlstest
