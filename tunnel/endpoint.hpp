#pragma once
// TCP endpoints ("HOST:PORT", "[V6ADDR]:PORT") and the sockets made from them.

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;
};

// Parses HOST:PORT; returns nullopt and fills error on bad input.
std::optional<Endpoint> parse_endpoint(const std::string& text, std::string& error);

struct ResolvedAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
};
// Resolves host (numeric or name) to addresses for TCP. Empty with error filled on failure.
std::vector<ResolvedAddress> resolve(const Endpoint& ep, std::string& error);

// A listening TCP socket bound to ep (SO_REUSEADDR; SO_REUSEPORT too if asked). Invalid with error
// filled on failure.
unique_fd listen_tcp(const Endpoint& ep, std::string& error, bool reuse_port = false);
// The local address of a bound socket, as HOST:PORT.
std::string local_endpoint(int fd);
// The peer address of a connected socket, as HOST:PORT.
std::string peer_endpoint(int fd);

}  // namespace nbdtunnel::tunnel
