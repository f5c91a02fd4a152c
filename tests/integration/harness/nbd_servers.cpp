#include "tests/integration/harness/nbd_servers.hpp"

#include <stdexcept>
#include <system_error>
#include <thread>

#include "tests/integration/harness/sockets.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr Seconds kStartTimeout{10};

Process wait_ready(Process p, const std::string& socket) {
  if (!wait_for_unix_listener(socket, kStartTimeout)) {
    p.dump_log();
    throw std::runtime_error(p.name() + " is not listening on " + socket + " after 10 s");
  }
  return p;
}

}  // namespace

bool wait_for_unix_listener(const std::string& path, Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    try {
      RawSocket::connect_unix(path);
      return true;
    } catch (const std::system_error&) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

Process start_nbdkit_memory(const TempDir& dir, const std::string& socket, std::uint64_t bytes,
                            const std::string& name) {
  Process p(name,
            {"nbdkit", "--foreground", "--exit-with-parent", "--unix", socket, "memory",
             std::to_string(bytes)},
            dir.file(name + ".log"));
  return wait_ready(std::move(p), socket);
}

Process start_qemu_nbd(const TempDir& dir, const std::string& socket, const std::string& image,
                       const std::string& export_name, const std::string& name) {
  Process p(name,
            {"qemu-nbd", "--format=raw", "--socket=" + socket, "--export-name=" + export_name,
             "--persistent", "--shared=16", "--cache=writeback", image},
            dir.file(name + ".log"));
  return wait_ready(std::move(p), socket);
}

}  // namespace nbdtunnel::testing
