#include "tunnel/socket_transport.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

namespace nbdtunnel::tunnel {

Error would_block_error() {
  return Error{std::make_error_code(std::errc::operation_would_block), {}};
}

bool would_block(const Error& e) {
  return e.code == std::errc::operation_would_block;
}

namespace {
// The result of a non-blocking syscall: bytes, would_block, or the error named by what.
Result<std::size_t> outcome(ssize_t n, const char* what) {
  if (n >= 0) return static_cast<std::size_t>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK) return would_block_error();
  return system_error(errno, what);
}
}  // namespace

SocketTransport::SocketTransport(Ring& ring, unique_fd socket)
    : ring_(ring), socket_(std::move(socket)) {
  const int one = 1;
  ::setsockopt(socket_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  set_nonblocking(socket_.get());
}

Result<std::size_t> SocketTransport::read(std::span<std::uint8_t> into) {
  ssize_t n;
  do {
    n = ::recv(socket_.get(), into.data(), into.size(), MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return outcome(n, "receive failed");
}

Result<std::size_t> SocketTransport::write(std::span<const iovec> iov, bool more) {
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  ssize_t n;
  do {
    n = ::sendmsg(socket_.get(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL | (more ? MSG_MORE : 0));
  } while (n < 0 && errno == EINTR);
  return outcome(n, "send failed");
}

Result<std::size_t> SocketTransport::splice_in(int pipe_w, std::size_t n) {
  ssize_t got;
  do {
    got = ::splice(socket_.get(), nullptr, pipe_w, nullptr, n, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  } while (got < 0 && errno == EINTR);
  return outcome(got, "receive failed");
}

Result<std::size_t> SocketTransport::splice_out(int pipe_r, std::size_t n, bool more) {
  ssize_t sent;
  do {
    sent = ::splice(pipe_r, nullptr, socket_.get(), nullptr, n,
                    SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (more ? SPLICE_F_MORE : 0));
  } while (sent < 0 && errno == EINTR);
  if (sent == 0 && n > 0)
    return Error{std::make_error_code(std::errc::io_error), "send failed: no progress"};
  return outcome(sent, "send failed");
}

void SocketTransport::wait_readable(Op& op) {
  io_uring_prep_poll_add(ring_.prepare(op), socket_.get(), POLLIN);
}

void SocketTransport::wait_writable(Op& op) {
  io_uring_prep_poll_add(ring_.prepare(op), socket_.get(), POLLOUT);
}

void SocketTransport::shutdown() {
  // Completes every poll on the socket (POLLHUP); the fd closes with the transport.
  ::shutdown(socket_.get(), SHUT_RDWR);
}

}  // namespace nbdtunnel::tunnel
