#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>

#include "tests/integration/harness/process.hpp"

namespace nbdtunnel::testing {

// A blocking client socket with bounded reads, for poking at daemons byte by byte.
class RawSocket {
 public:
  static RawSocket connect_unix(const std::string& path);
  static RawSocket connect_tcp(const std::string& host, int port);
  // A listening UNIX socket at `path` (the file is left behind when this closes).
  static RawSocket listen_unix(const std::string& path);

  RawSocket(RawSocket&& other) noexcept;
  RawSocket& operator=(RawSocket&&) = delete;
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;
  ~RawSocket();

  // Sends everything; false if the peer has gone (EPIPE / ECONNRESET).
  bool send_all(std::span<const std::byte> data);
  // Reads exactly n bytes, or nullopt on EOF, error or timeout.
  std::optional<std::string> read_exact(std::size_t n, Seconds timeout);
  // Discards whatever arrives until the peer closes (true) or the timeout passes (false).
  bool wait_closed(Seconds timeout);
  void close();
  int fd() const { return fd_; }

 private:
  explicit RawSocket(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Leaves a socket file at `path` with nothing listening on it, as a crashed daemon would.
void make_stale_socket(const std::string& path);

}  // namespace nbdtunnel::testing
