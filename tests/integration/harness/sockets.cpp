#include "tests/integration/harness/sockets.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace nbdtunnel::testing {
namespace {

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    throw std::invalid_argument("UNIX socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

int new_socket(int domain) {
  int fd = ::socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "socket");
  return fd;
}

[[noreturn]] void fail_and_close(int fd, const std::string& what) {
  int err = errno;
  ::close(fd);
  throw std::system_error(err, std::generic_category(), what);
}

// Milliseconds left until `deadline`, for poll().
int millis_until(std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

}  // namespace

RawSocket RawSocket::connect_unix(const std::string& path) {
  auto addr = unix_address(path);
  int fd = new_socket(AF_UNIX);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    fail_and_close(fd, "connect " + path);
  }
  return RawSocket(fd);
}

RawSocket RawSocket::connect_tcp(const std::string& host, int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    throw std::invalid_argument("not an IPv4 address: " + host);
  }
  int fd = new_socket(AF_INET);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    fail_and_close(fd, "connect " + host + ":" + std::to_string(port));
  }
  return RawSocket(fd);
}

RawSocket RawSocket::listen_unix(const std::string& path) {
  auto addr = unix_address(path);
  int fd = new_socket(AF_UNIX);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    fail_and_close(fd, "bind " + path);
  }
  if (::listen(fd, 8) != 0) fail_and_close(fd, "listen " + path);
  return RawSocket(fd);
}

RawSocket::RawSocket(RawSocket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

RawSocket::~RawSocket() {
  close();
}

void RawSocket::close() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

bool RawSocket::send_all(std::span<const std::byte> data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    data = data.subspan(static_cast<std::size_t>(n));
  }
  return true;
}

std::optional<std::string> RawSocket::read_exact(std::size_t n, Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
  std::string out;
  out.resize(n);
  std::size_t got = 0;
  while (got < n) {
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, millis_until(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    ssize_t m = ::recv(fd_, out.data() + got, n - got, 0);
    if (m < 0 && errno == EINTR) continue;
    if (m <= 0) return std::nullopt;
    got += static_cast<std::size_t>(m);
  }
  return out;
}

bool RawSocket::wait_closed(Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
  char buf[4096];
  for (;;) {
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, millis_until(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return false;
    if (r < 0) return true;
    ssize_t m = ::recv(fd_, buf, sizeof buf, 0);
    if (m < 0 && errno == EINTR) continue;
    if (m <= 0) return true;  // EOF, or ECONNRESET: closed either way
  }
}

void make_stale_socket(const std::string& path) {
  RawSocket::listen_unix(path).close();
}

}  // namespace nbdtunnel::testing
