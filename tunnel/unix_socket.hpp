#pragma once
// Local UNIX sockets: creating a listener safely, and accepting on it through the ring.

#include <sys/types.h>

#include <functional>
#include <string>

#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

// Largest path a sockaddr_un holds (without the terminating NUL).
std::size_t max_unix_path();

// Creates a listening UNIX socket at path with the given mode. Refuses a path where something
// is listening or that is not a socket; replaces a stale socket file.
Result<unique_fd> listen_unix(const std::string& path, mode_t mode);

// Accepts connections on a listening socket, one accept in flight at a time.
class Acceptor {
 public:
  // on_accept gets each accepted socket, or the error accept(2) returned.
  using Handler = std::function<void(Result<unique_fd> client)>;
  Acceptor(Ring& ring, unique_fd listener, Handler on_accept);
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  void start();
  // Stops accepting; idle() turns true once the accept in flight has completed.
  void stop();
  bool idle() const { return !op_.busy() && !pause_op_.busy(); }

 private:
  void arm();
  void on_complete(int res);

  Ring& ring_;
  unique_fd listener_;
  Handler on_accept_;
  Op op_;
  Op pause_op_;  // out of file descriptors: wait a little before accepting again
  __kernel_timespec pause_{};
  bool stopped_ = false;
};

}  // namespace nbdtunnel::tunnel
