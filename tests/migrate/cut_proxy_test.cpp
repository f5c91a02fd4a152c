// bench/tools/cut_proxy on its own, so that the resume tests can rely on what it does: it relays
// bytes and half-closes both ways; SIGUSR1 resets every connection on both sides; SIGUSR2 takes
// the link down (connections reset, new ones reset at once, nothing reaches upstream) and up.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>

#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::testing {
namespace {

// The upstream the proxy connects to: a TCP listener on 127.0.0.1:0.
class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, 8) != 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len)) {
      throw std::system_error(errno, std::generic_category(), "listen on 127.0.0.1:0");
    }
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() { ::close(fd_); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  int port() const { return port_; }
  // The next connection's fd, or -1 if none comes within `timeout_ms`.
  int accept(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) != 1) return -1;
    return ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// An fd closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// What one recv() on `fd` gives within 5 s: the bytes, "" for EOF, or the errno as "errno N".
std::string receive(int fd, std::size_t max = 64) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 5000) != 1) return "timeout";
  std::string buf(max, '\0');
  const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  if (n < 0) return "errno " + std::to_string(errno);
  buf.resize(static_cast<std::size_t>(n));
  return buf;
}

void send_text(int fd, const std::string& text) {
  ASSERT_EQ(::send(fd, text.data(), text.size(), MSG_NOSIGNAL), static_cast<ssize_t>(text.size()));
}

const std::string kReset = "errno " + std::to_string(ECONNRESET);

struct Proxy {
  Process process;
  int port = 0;
};

Proxy start_proxy(const TempDir& dir, int upstream_port) {
  Process p("cut_proxy",
            {NBDTUNNEL_CUT_PROXY, "--listen", "127.0.0.1:0", "--connect",
             "127.0.0.1:" + std::to_string(upstream_port)},
            dir.file("cut_proxy.log"));
  auto m = p.wait_for_log(R"(listening on [^\s]*:(\d+))", Seconds(10));
  if (!m) throw std::runtime_error("cut_proxy did not start: " + p.log());
  const int port = std::stoi((*m)[1]);
  return Proxy{std::move(p), port};
}

// Connects a client through the proxy and returns it with the upstream end (-1 if none comes
// within `upstream_ms`).
std::pair<int, int> connect_through(Proxy& proxy, Listener& upstream, int upstream_ms = 5000) {
  const int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(proxy.port));
  if (::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw std::system_error(errno, std::generic_category(), "connect to the proxy");
  }
  return {client, upstream.accept(upstream_ms)};
}

TEST(CutProxy, RelaysBothWaysAndPassesHalfCloses) {
  TempDir dir;
  Listener upstream;
  auto proxy = start_proxy(dir, upstream.port());
  auto [c, u] = connect_through(proxy, upstream);
  Fd client{c}, server{u};
  ASSERT_GE(server.fd, 0) << "the proxy did not connect upstream";
  const std::string big(1 << 20, 'x');
  send_text(client.fd, big);
  std::string got;
  while (got.size() < big.size()) {
    const std::string part = receive(server.fd, 1 << 16);
    ASSERT_FALSE(part.empty() || part == "timeout" || part.rfind("errno", 0) == 0) << part;
    got += part;
  }
  EXPECT_EQ(got, big);
  send_text(server.fd, "hello");
  EXPECT_EQ(receive(client.fd), "hello");
  ::shutdown(client.fd, SHUT_WR);
  EXPECT_EQ(receive(server.fd), "");
  send_text(server.fd, "still open");
  EXPECT_EQ(receive(client.fd), "still open");
  ::shutdown(server.fd, SHUT_WR);
  EXPECT_EQ(receive(client.fd), "");
  EXPECT_TRUE(proxy.process.wait_for_log("connection 1 ended", Seconds(5)));
}

TEST(CutProxy, SigusrOneResetsBothSidesAndLaterConnectionsRelay) {
  TempDir dir;
  Listener upstream;
  auto proxy = start_proxy(dir, upstream.port());
  auto [c1, u1] = connect_through(proxy, upstream);
  auto [c2, u2] = connect_through(proxy, upstream);
  Fd a{c1}, b{u1}, x{c2}, y{u2};
  ASSERT_TRUE(proxy.process.wait_for_log("accepted connection 2", Seconds(5)));
  proxy.process.signal(SIGUSR1);
  ASSERT_TRUE(proxy.process.wait_for_log("cut 2 connections", Seconds(5))) << proxy.process.log();
  EXPECT_EQ(receive(a.fd), kReset);
  EXPECT_EQ(receive(b.fd), kReset);
  EXPECT_EQ(receive(x.fd), kReset);
  EXPECT_EQ(receive(y.fd), kReset);

  auto [c3, u3] = connect_through(proxy, upstream);
  Fd client{c3}, server{u3};
  ASSERT_GE(server.fd, 0);
  send_text(client.fd, "after the cut");
  EXPECT_EQ(receive(server.fd), "after the cut");
}

TEST(CutProxy, SigusrTwoTakesTheLinkDownAndUp) {
  TempDir dir;
  Listener upstream;
  auto proxy = start_proxy(dir, upstream.port());
  auto [c1, u1] = connect_through(proxy, upstream);
  Fd a{c1}, b{u1};
  ASSERT_TRUE(proxy.process.wait_for_log("accepted connection 1", Seconds(5)));
  proxy.process.signal(SIGUSR2);
  ASSERT_TRUE(proxy.process.wait_for_log("down, reset 1 connections", Seconds(5)))
      << proxy.process.log();
  EXPECT_EQ(receive(a.fd), kReset);
  EXPECT_EQ(receive(b.fd), kReset);

  // While down: the connect succeeds (the listener is there), then the connection is reset,
  // and nothing reaches the upstream.
  auto [c2, u2] = connect_through(proxy, upstream, 500);
  Fd refused{c2}, none{u2};
  EXPECT_EQ(none.fd, -1) << "a connection reached upstream while the link was down";
  EXPECT_EQ(receive(refused.fd), kReset);
  EXPECT_TRUE(proxy.process.wait_for_log("reset a new connection: the link is down", Seconds(5)));

  proxy.process.signal(SIGUSR2);
  ASSERT_TRUE(proxy.process.wait_for_log("cut_proxy: up", Seconds(5))) << proxy.process.log();
  auto [c3, u3] = connect_through(proxy, upstream);
  Fd client{c3}, server{u3};
  ASSERT_GE(server.fd, 0);
  send_text(server.fd, "back up");
  EXPECT_EQ(receive(client.fd), "back up");
}

}  // namespace
}  // namespace nbdtunnel::testing
