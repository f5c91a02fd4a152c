#pragma once
// A Transport reads and writes a channel's bytes; the channel's reader and writer talk to it and
// never to a file descriptor. Every call is non-blocking: it moves what it can now and returns
// how many bytes moved (a read of 0: the peer closed), or an error. would_block(error) means
// "nothing now": wait_readable / wait_writable arm an Op that completes when trying again may
// succeed. Implementations: SocketTransport (a plain TCP socket, which can splice) and
// TlsTransport (TLS 1.3 in user space; it cannot splice).

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"

namespace nbdtunnel::tunnel {

class Transport {
 public:
  virtual ~Transport() = default;

  virtual Result<std::size_t> read(std::span<std::uint8_t> into) = 0;
  // Writes the bytes of iov in order. more: the caller has more to send right after (the
  // transport may hold a partial segment back for it).
  virtual Result<std::size_t> write(std::span<const iovec> iov, bool more) = 0;

  // Whether payload pages can move by reference between this transport and a pipe.
  virtual bool can_splice() const = 0;
  // Moves up to n bytes from the transport into the pipe's write end (can_splice() only).
  virtual Result<std::size_t> splice_in(int pipe_w, std::size_t n) = 0;
  // Moves up to n bytes from the pipe's read end onto the transport (can_splice() only).
  virtual Result<std::size_t> splice_out(int pipe_r, std::size_t n, bool more) = 0;

  // A write may accept bytes and still hold some of their encoding (TLS records the socket did
  // not take yet). While has_pending_output(), the writer keeps calling flush_pending() (bytes
  // moved, or would_block: wait_writable) until it is false, even with nothing more to write.
  virtual bool has_pending_output() const { return false; }
  virtual Result<std::size_t> flush_pending() { return std::size_t{0}; }

  // op completes (res: a poll mask, or -errno) when read or write may make progress.
  virtual void wait_readable(Op& op) = 0;
  virtual void wait_writable(Op& op) = 0;
  // Ends all I/O: pending waits complete, later calls fail. The owner then waits until no Op of
  // its own is busy before destroying the transport.
  virtual void shutdown() = 0;
  // What this transport is, for logs ("tcp", "tls1.3 TLS_AES_256_GCM_SHA384").
  virtual std::string describe() const = 0;
};

// The error a non-blocking call returns when it can move nothing now.
Error would_block_error();
bool would_block(const Error& e);

}  // namespace nbdtunnel::tunnel
