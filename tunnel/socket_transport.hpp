#pragma once
// The plain transport: a connected TCP (or UNIX) socket, made non-blocking. Reads and writes are
// recv / sendmsg with MSG_DONTWAIT; splice moves payload pages between the socket and a pipe;
// waits are io_uring POLL_ADDs. io_uring's own SPLICE runs on a worker thread (two context
// switches per payload, measured slower than copying), so the syscalls run on the event loop
// and the ring only waits.

#include "tunnel/transport.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

class SocketTransport final : public Transport {
 public:
  SocketTransport(Ring& ring, unique_fd socket);

  Result<std::size_t> read(std::span<std::uint8_t> into) override;
  Result<std::size_t> write(std::span<const iovec> iov, bool more) override;
  bool can_splice() const override { return true; }
  Result<std::size_t> splice_in(int pipe_w, std::size_t n) override;
  Result<std::size_t> splice_out(int pipe_r, std::size_t n, bool more) override;
  void wait_readable(Op& op) override;
  void wait_writable(Op& op) override;
  void shutdown() override;
  std::string describe() const override { return "tcp"; }

 private:
  Ring& ring_;
  unique_fd socket_;
};

}  // namespace nbdtunnel::tunnel
