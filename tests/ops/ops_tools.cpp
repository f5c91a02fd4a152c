#include "tests/ops/ops_tools.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <fstream>
#include <sstream>

#include "tests/integration/harness/sockets.hpp"

namespace nbdtunnel::testing {

CommandOutput capture(const TempDir& dir, const std::string& name, std::vector<std::string> argv,
                      Seconds timeout) {
  const std::string log = dir.file(name + ".out");
  CommandOutput out;
  out.exit = run_command(name, std::move(argv), log, timeout);
  out.output = read_file(log);
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::optional<std::string> http_exchange(int port, const std::string& request, Seconds timeout) {
  RawSocket s = RawSocket::connect_tcp("127.0.0.1", port);
  if (!s.send_all(std::as_bytes(std::span(request.data(), request.size())))) return std::nullopt;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string got;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{s.fd(), POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      return std::nullopt;
    }
    char buf[4096];
    const ssize_t n = ::recv(s.fd(), buf, sizeof buf, 0);
    if (n <= 0) return got;
    got.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace nbdtunnel::testing
