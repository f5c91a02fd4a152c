#pragma once
// TCP endpoints ("HOST:PORT", "[V6ADDR]:PORT") and the sockets made from them.

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tunnel/result.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;
};

// Parses HOST:PORT; an input_error saying what is wrong on bad input.
Result<Endpoint> parse_endpoint(const std::string& text);

struct ResolvedAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
};
// Resolves host (numeric or name) to at least one address for TCP.
Result<std::vector<ResolvedAddress>> resolve(const Endpoint& ep);

// A listening TCP socket bound to ep (SO_REUSEADDR; SO_REUSEPORT too if asked).
Result<unique_fd> listen_tcp(const Endpoint& ep, bool reuse_port = false);
// The local address of a bound socket, as HOST:PORT.
std::string local_endpoint(int fd);
// The peer address of a connected socket, as HOST:PORT.
std::string peer_endpoint(int fd);
// The peer's IP address alone (no port), e.g. to count connections per source host.
std::string peer_host(int fd);
// Whether host (a name or an address literal) means this machine's loopback only.
bool is_loopback(const std::string& host);

}  // namespace nbdtunnel::tunnel
