#include "tunnel/endpoint.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>

namespace nbdtunnel::tunnel {

std::string Endpoint::to_string() const {
  return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                             : fmt::format("{}:{}", host, port);
}

Result<Endpoint> parse_endpoint(const std::string& text) {
  Endpoint ep;
  std::string port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return input_error(
          fmt::format("'{}' is not HOST:PORT (IPv6 addresses are written [ADDR]:PORT)", text),
          std::errc::invalid_argument);
    }
    ep.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) {
      return input_error(fmt::format("'{}' is not HOST:PORT", text), std::errc::invalid_argument);
    }
    ep.host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  // A bracket inside the host could not be written back as HOST:PORT (to_string) and is in no
  // host name or address anyway.
  if (ep.host.find_first_of("[]") != std::string::npos) {
    return input_error(fmt::format("'{}' is not HOST:PORT: the host has a stray bracket", text),
                       std::errc::invalid_argument);
  }
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ep.host.empty() || port.empty() || ec != std::errc{} || end != port.data() + port.size() ||
      value > 65535) {
    return input_error(
        fmt::format("'{}' is not HOST:PORT with a port number from 0 to 65535", text),
        std::errc::invalid_argument);
  }
  ep.port = static_cast<std::uint16_t>(value);
  return ep;
}

Result<std::vector<ResolvedAddress>> resolve(const Endpoint& ep) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(ep.port);
  if (int rc = ::getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    const std::string message = fmt::format("cannot resolve '{}': {}", ep.host, ::gai_strerror(rc));
    if (rc == EAI_SYSTEM) return system_error(errno, message);
    return input_error(message, std::errc::address_not_available);
  }
  std::vector<ResolvedAddress> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    ResolvedAddress a;
    std::memcpy(&a.addr, ai->ai_addr, ai->ai_addrlen);
    a.len = ai->ai_addrlen;
    out.push_back(a);
  }
  ::freeaddrinfo(res);
  if (out.empty()) {
    return input_error(fmt::format("no address for {}", ep.to_string()),
                       std::errc::address_not_available);
  }
  return out;
}

Result<unique_fd> listen_tcp(const Endpoint& ep, bool reuse_port) {
  Result<std::vector<ResolvedAddress>> addrs = resolve(ep);
  if (!addrs) return addrs.error();
  std::optional<Error> error;
  for (const ResolvedAddress& a : *addrs) {
    unique_fd fd(::socket(a.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) continue;
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuse_port) ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a.addr), a.len) == 0 &&
        ::listen(fd.get(), 128) == 0) {
      return fd;
    }
    error = system_error(errno, fmt::format("cannot listen on {}", ep.to_string()));
  }
  if (!error) error = input_error(fmt::format("no address for {}", ep.to_string()));
  return *std::move(error);
}

namespace {
std::string format_host(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
  } else if (ss.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof buf);
  }
  return buf;
}

std::string format_address(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    return fmt::format("{}:{}", buf, ntohs(in->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    return fmt::format("[{}]:{}", buf, ntohs(in6->sin6_port));
  }
  return "unknown";
}
}  // namespace

std::string local_endpoint(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "unknown";
  return format_address(ss);
}

std::string peer_endpoint(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "unknown";
  return format_address(ss);
}

std::string peer_host(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "unknown";
  return format_host(ss);
}

bool is_loopback(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    if (IN6_IS_ADDR_V4MAPPED(&v6)) return v6.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace nbdtunnel::tunnel
