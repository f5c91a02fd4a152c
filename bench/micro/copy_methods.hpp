#pragma once
// The four ways a relay can move bytes from one socket to another, each as small as it can be.
// Blocking sockets, one direction, one operation in flight: the per-byte cost of each path.

#include <cstdint>
#include <memory>
#include <string>

namespace bench {

class Copier {
 public:
  virtual ~Copier() = default;
  // Moves exactly n bytes from in to out. Returns an error text, empty on success.
  virtual std::string copy(int in, int out, std::uint64_t n) = 0;
};

// (i) read() into a 256 KiB buffer, write() it out.
std::unique_ptr<Copier> make_read_write(std::size_t buf_size = 256 << 10);
// (ii) splice(in -> pipe) then splice(pipe -> out); the pipe enlarged with F_SETPIPE_SZ.
std::unique_ptr<Copier> make_splice(std::size_t pipe_size = 1 << 20);
// (iii) io_uring recv into a 256 KiB buffer, then io_uring send.
std::unique_ptr<Copier> make_uring_recv_send(std::size_t buf_size = 256 << 10);
// (iv) io_uring splice in -> pipe, then io_uring splice pipe -> out.
std::unique_ptr<Copier> make_uring_splice(std::size_t pipe_size = 1 << 20);

}  // namespace bench
