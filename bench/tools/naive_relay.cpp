// naive_relay: the simplest relay that could carry one NBD connection per TCP connection — the
// macro bench's calibration point for how far the framed, multiplexed engine is from it. No
// framing, no multiplexing, no flow control of its own: a thread per direction, blocking
// splice(2) TCP → pipe → UNIX, blocking read/write UNIX → TCP through a 256 KiB buffer.
//
//   naive_relay --unix-listen PATH --tcp-connect HOST:PORT    (the source side)
//   naive_relay --tcp-listen HOST:PORT --unix-connect PATH    (the destination side)
//
// Prints "listening on ..." once ready; one pair of threads per accepted connection.

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t kBuffer = 256 * 1024;

struct Options {
  std::string unix_listen, unix_connect, tcp_listen, tcp_connect;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "naive_relay: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

bool split(const std::string& hp, std::string& host, std::string& port) {
  const auto colon = hp.rfind(':');
  if (colon == std::string::npos) return false;
  host = hp.substr(0, colon);
  port = hp.substr(colon + 1);
  return true;
}

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) {
    std::fprintf(stderr, "naive_relay: socket path too long: %s\n", path.c_str());
    std::exit(2);
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

int tcp_socket(const std::string& hp, bool listening) {
  std::string host, port;
  if (!split(hp, host, port)) {
    std::fprintf(stderr, "naive_relay: %s is not HOST:PORT\n", hp.c_str());
    std::exit(2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = listening ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return -1;
  const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  bool ok = fd >= 0;
  if (ok && listening) {
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ok = ::bind(fd, res->ai_addr, res->ai_addrlen) == 0 && ::listen(fd, 64) == 0;
  } else if (ok) {
    ok = ::connect(fd, res->ai_addr, res->ai_addrlen) == 0;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ::freeaddrinfo(res);
  if (!ok && fd >= 0) ::close(fd);
  return ok ? fd : -1;
}

int unix_socket(const std::string& path, bool listening) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a = unix_addr(path);
  bool ok = fd >= 0;
  if (ok && listening) {
    ::unlink(path.c_str());
    ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd, 64) == 0;
  } else if (ok) {
    ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  if (!ok && fd >= 0) ::close(fd);
  return ok ? fd : -1;
}

// TCP → UNIX: splice through a pipe, as large as the kernel gives.
void splice_copy(int from, int to) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return;
  ::fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
  for (;;) {
    const ssize_t in = ::splice(from, nullptr, p[1], nullptr, 1 << 20, SPLICE_F_MOVE);
    if (in <= 0) break;
    ssize_t left = in;
    while (left > 0) {
      const ssize_t out =
          ::splice(p[0], nullptr, to, nullptr, static_cast<std::size_t>(left), SPLICE_F_MOVE);
      if (out <= 0) goto done;
      left -= out;
    }
  }
done:
  ::close(p[0]);
  ::close(p[1]);
  ::shutdown(to, SHUT_WR);
}

// UNIX → TCP: read and write through a buffer.
void buffer_copy(int from, int to) {
  std::vector<char> buf(kBuffer);
  for (;;) {
    const ssize_t n = ::read(from, buf.data(), buf.size());
    if (n <= 0) break;
    ssize_t off = 0;
    while (off < n) {
      const ssize_t w =
          ::send(to, buf.data() + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
      if (w <= 0) goto done;
      off += w;
    }
  }
done:
  ::shutdown(to, SHUT_WR);
}

void serve(int accepted, const Options& o) {
  const bool source_side = !o.unix_listen.empty();
  const int other =
      source_side ? tcp_socket(o.tcp_connect, false) : unix_socket(o.unix_connect, false);
  if (other < 0) {
    ::close(accepted);
    return;
  }
  const int tcp = source_side ? other : accepted;
  const int unx = source_side ? accepted : other;
  std::thread t([tcp, unx] { splice_copy(tcp, unx); });
  buffer_copy(unx, tcp);
  t.join();
  ::close(accepted);
  ::close(other);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--unix-listen")
      o.unix_listen = argv[i + 1];
    else if (flag == "--unix-connect")
      o.unix_connect = argv[i + 1];
    else if (flag == "--tcp-listen")
      o.tcp_listen = argv[i + 1];
    else if (flag == "--tcp-connect")
      o.tcp_connect = argv[i + 1];
    else {
      std::fprintf(stderr, "naive_relay: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  const bool source_side = !o.unix_listen.empty() && !o.tcp_connect.empty();
  const bool dest_side = !o.tcp_listen.empty() && !o.unix_connect.empty();
  if (source_side == dest_side) {
    std::fprintf(stderr,
                 "usage: naive_relay --unix-listen PATH --tcp-connect HOST:PORT\n"
                 "       naive_relay --tcp-listen HOST:PORT --unix-connect PATH\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  const int lfd = source_side ? unix_socket(o.unix_listen, true) : tcp_socket(o.tcp_listen, true);
  if (lfd < 0) die("listen");
  std::printf("listening on %s\n", source_side ? o.unix_listen.c_str() : o.tcp_listen.c_str());
  std::fflush(stdout);
  for (;;) {
    const int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR) continue;
      die("accept");
    }
    if (!source_side) {
      const int one = 1;
      ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    std::thread(serve, c, std::cref(o)).detach();
  }
}
