#include "copy_methods.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace bench {
namespace {

std::string errno_text(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

// A pipe sized with F_SETPIPE_SZ; size() is what the kernel granted.
class Pipe {
 public:
  explicit Pipe(std::size_t want) {
    if (pipe2(fds_, O_CLOEXEC) < 0) throw std::runtime_error(errno_text("pipe2", errno));
    int got = fcntl(fds_[1], F_SETPIPE_SZ, static_cast<int>(want));
    size_ = got > 0 ? static_cast<std::size_t>(got) : 65536;
  }
  ~Pipe() {
    close(fds_[0]);
    close(fds_[1]);
  }
  int r() const { return fds_[0]; }
  int w() const { return fds_[1]; }
  std::size_t size() const { return size_; }

 private:
  int fds_[2];
  std::size_t size_ = 0;
};

class ReadWrite final : public Copier {
 public:
  explicit ReadWrite(std::size_t n) : buf_(n) {}
  std::string copy(int in, int out, std::uint64_t n) override {
    while (n > 0) {
      ssize_t r = read(in, buf_.data(), std::min<std::uint64_t>(buf_.size(), n));
      if (r <= 0) return r == 0 ? "read: early EOF" : errno_text("read", errno);
      for (ssize_t off = 0; off < r;) {
        ssize_t w = write(out, buf_.data() + off, static_cast<std::size_t>(r - off));
        if (w < 0) return errno_text("write", errno);
        off += w;
      }
      n -= static_cast<std::uint64_t>(r);
    }
    return {};
  }

 private:
  std::vector<char> buf_;
};

class Splice final : public Copier {
 public:
  explicit Splice(std::size_t pipe_size) : pipe_(pipe_size) {}
  std::string copy(int in, int out, std::uint64_t n) override {
    while (n > 0) {
      ssize_t r = splice(in, nullptr, pipe_.w(), nullptr, std::min<std::uint64_t>(pipe_.size(), n),
                         SPLICE_F_MOVE | SPLICE_F_MORE);
      if (r <= 0) return r == 0 ? "splice in: early EOF" : errno_text("splice in", errno);
      for (ssize_t left = r; left > 0;) {
        ssize_t w = splice(pipe_.r(), nullptr, out, nullptr, static_cast<std::size_t>(left),
                           SPLICE_F_MOVE | SPLICE_F_MORE);
        if (w <= 0) return errno_text("splice out", errno);
        left -= w;
      }
      n -= static_cast<std::uint64_t>(r);
    }
    return {};
  }

 private:
  Pipe pipe_;
};

// A small ring; run() submits the one prepared SQE and returns its result.
class Ring {
 public:
  Ring() {
    int rc = io_uring_queue_init(8, &ring_, 0);
    if (rc < 0) throw std::runtime_error(errno_text("io_uring_queue_init", -rc));
  }
  ~Ring() { io_uring_queue_exit(&ring_); }
  io_uring_sqe* sqe() { return io_uring_get_sqe(&ring_); }
  int run() {
    io_uring_submit_and_wait(&ring_, 1);
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc < 0) return rc;
    int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    return res;
  }

 private:
  io_uring ring_{};
};

class UringRecvSend final : public Copier {
 public:
  explicit UringRecvSend(std::size_t n) : buf_(n) {}
  std::string copy(int in, int out, std::uint64_t n) override {
    while (n > 0) {
      io_uring_prep_recv(ring_.sqe(), in, buf_.data(), std::min<std::uint64_t>(buf_.size(), n), 0);
      int r = ring_.run();
      if (r <= 0) return r == 0 ? "recv: early EOF" : errno_text("recv", -r);
      for (int off = 0; off < r;) {
        io_uring_prep_send(ring_.sqe(), out, buf_.data() + off, static_cast<std::size_t>(r - off),
                           MSG_NOSIGNAL);
        int w = ring_.run();
        if (w < 0) return errno_text("send", -w);
        off += w;
      }
      n -= static_cast<std::uint64_t>(r);
    }
    return {};
  }

 private:
  Ring ring_;
  std::vector<char> buf_;
};

class UringSplice final : public Copier {
 public:
  explicit UringSplice(std::size_t pipe_size) : pipe_(pipe_size) {}
  std::string copy(int in, int out, std::uint64_t n) override {
    while (n > 0) {
      io_uring_prep_splice(ring_.sqe(), in, -1, pipe_.w(), -1,
                           static_cast<unsigned>(std::min<std::uint64_t>(pipe_.size(), n)),
                           SPLICE_F_MOVE | SPLICE_F_MORE);
      int r = ring_.run();
      if (r <= 0) return r == 0 ? "splice in: early EOF" : errno_text("splice in", -r);
      for (int left = r; left > 0;) {
        io_uring_prep_splice(ring_.sqe(), pipe_.r(), -1, out, -1, static_cast<unsigned>(left),
                             SPLICE_F_MOVE | SPLICE_F_MORE);
        int w = ring_.run();
        if (w <= 0) return errno_text("splice out", -w);
        left -= w;
      }
      n -= static_cast<std::uint64_t>(r);
    }
    return {};
  }

 private:
  Ring ring_;
  Pipe pipe_;
};

}  // namespace

std::unique_ptr<Copier> make_read_write(std::size_t buf_size) {
  return std::make_unique<ReadWrite>(buf_size);
}
std::unique_ptr<Copier> make_splice(std::size_t pipe_size) {
  return std::make_unique<Splice>(pipe_size);
}
std::unique_ptr<Copier> make_uring_recv_send(std::size_t buf_size) {
  return std::make_unique<UringRecvSend>(buf_size);
}
std::unique_ptr<Copier> make_uring_splice(std::size_t pipe_size) {
  return std::make_unique<UringSplice>(pipe_size);
}

}  // namespace bench
