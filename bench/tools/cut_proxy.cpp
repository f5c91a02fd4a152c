// cut_proxy: a TCP relay whose connections can be cut on demand, to play a network that drops
// connections. SIGUSR1 resets every current connection on both sides (SO_LINGER {1, 0}, then
// close: both peers see ECONNRESET). SIGUSR2 takes the link down: every current connection is
// reset, and while it is down each new connection is accepted and reset at once, without
// connecting upstream; SIGUSR2 again brings it up. Bytes the relay held when it cut are lost,
// as on a real link.
//
//   cut_proxy --listen HOST:PORT --connect HOST:PORT
//
// Prints "listening on HOST:PORT" (port 0 resolved) on stdout once ready, and one line per
// event on stderr: "accepted connection N", "cut N connections", "down, reset N connections",
// "reset a new connection: the link is down", "up", and how each connection ended.
//
// One thread, one poll loop over non-blocking sockets; the signals arrive through a signalfd,
// so a cut happens between two steps of the loop and never races a read or a write.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kBuffer = 256 * 1024;

struct Options {
  std::string listen_host = "127.0.0.1", listen_port = "0";
  std::string connect_host, connect_port;
};

bool split(const std::string& hp, std::string& host, std::string& port) {
  const auto colon = hp.rfind(':');
  if (colon == std::string::npos) return false;
  host = hp.substr(0, colon);
  port = hp.substr(colon + 1);
  return !host.empty() && !port.empty();
}

// Closes `fd` so that the peer gets a RST rather than a FIN.
void reset(int fd) {
  const linger hard{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
  ::close(fd);
}

void set_nonblocking(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// A blocking connect (the upstream is on loopback: it answers or refuses at once).
int connect_to(const std::string& host, const std::string& port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  return fd;
}

// Bytes read from one socket and not yet written to the other.
struct Direction {
  std::vector<char> buffer = std::vector<char>(kBuffer);
  std::size_t begin = 0, end = 0;
  bool read_done = false;   // the source said EOF
  bool write_done = false;  // EOF passed on (shutdown SHUT_WR) once the buffer drained

  bool has_room() const { return !read_done && end < buffer.size(); }
  bool has_data() const { return begin < end; }
};

enum class Step { ok, ended, failed };

// One relayed connection: client ⇄ upstream.
struct Connection {
  int number = 0;
  int client = -1, upstream = -1;
  Direction up;    // client → upstream
  Direction down;  // upstream → client

  bool finished() const { return up.write_done && down.write_done; }

  // Moves what it can from `from` to `to` through `d`; `readable`/`writable` from poll.
  static Step pump(int from, int to, Direction& d, bool readable, bool writable) {
    if (readable && d.has_room()) {
      const ssize_t n = ::recv(from, d.buffer.data() + d.end, d.buffer.size() - d.end, 0);
      if (n > 0) {
        d.end += static_cast<std::size_t>(n);
      } else if (n == 0) {
        d.read_done = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        return Step::failed;
      }
    }
    if (writable && d.has_data()) {
      const ssize_t n = ::send(to, d.buffer.data() + d.begin, d.end - d.begin, MSG_NOSIGNAL);
      if (n > 0) {
        d.begin += static_cast<std::size_t>(n);
        if (d.begin == d.end) d.begin = d.end = 0;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        return Step::failed;
      }
    }
    if (d.read_done && !d.has_data() && !d.write_done) {
      ::shutdown(to, SHUT_WR);
      d.write_done = true;
    }
    return d.write_done ? Step::ended : Step::ok;
  }
};

void say(const std::string& event) {
  std::fprintf(stderr, "cut_proxy: %s\n", event.c_str());
  std::fflush(stderr);
}

class Relay {
 public:
  Relay(const Options& o, int listener, int signals)
      : o_(o), listener_(listener), signals_(signals) {}

  [[noreturn]] void run() {
    for (;;) {
      std::vector<pollfd> fds{{listener_, POLLIN, 0}, {signals_, POLLIN, 0}};
      for (const auto& c : conns_) {
        fds.push_back({c->client, events(c->up, c->down), 0});
        fds.push_back({c->upstream, events(c->down, c->up), 0});
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        std::perror("cut_proxy: poll");
        std::exit(1);
      }
      // Signals first: a cut asked for now applies before more bytes move (and leaves no
      // connection for the poll results below).
      if ((fds[1].revents & POLLIN) && on_signal()) fds.resize(2);
      std::vector<std::unique_ptr<Connection>> kept;
      for (std::size_t i = 0; 2 + 2 * i < fds.size(); ++i) {
        auto& c = conns_[i];
        const short rc = fds[2 + 2 * i].revents, ru = fds[3 + 2 * i].revents;
        const bool c_in = rc & (POLLIN | POLLHUP), c_out = rc & POLLOUT;
        const bool u_in = ru & (POLLIN | POLLHUP), u_out = ru & POLLOUT;
        // POLLERR: a reset (or another error) is pending on that socket.
        const bool error = (rc | ru) & POLLERR;
        const Step a =
            error ? Step::failed : Connection::pump(c->client, c->upstream, c->up, c_in, u_out);
        const Step b =
            error ? Step::failed : Connection::pump(c->upstream, c->client, c->down, u_in, c_out);
        if (a == Step::failed || b == Step::failed) {
          // One side reset or failed: pass it on as a reset to the other.
          say("connection " + std::to_string(c->number) + " failed on one side: reset both");
          reset(c->client);
          reset(c->upstream);
        } else if (c->finished()) {
          say("connection " + std::to_string(c->number) + " ended");
          ::close(c->client);
          ::close(c->upstream);
        } else {
          kept.push_back(std::move(c));
        }
      }
      conns_ = std::move(kept);
      if (fds[0].revents & POLLIN) on_accept();
    }
  }

 private:
  // What to wait for on the socket that `out` reads from and `in` writes to.
  static short events(const Direction& out, const Direction& in) {
    short e = 0;
    if (out.has_room()) e |= POLLIN;
    if (in.has_data()) e |= POLLOUT;
    return e;
  }

  void on_accept() {
    const int c = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;  // EAGAIN, ECONNABORTED, EMFILE: try again on the next wake-up
    if (down_) {
      reset(c);
      say("reset a new connection: the link is down");
      return;
    }
    const int u = connect_to(o_.connect_host, o_.connect_port);
    if (u < 0) {
      std::fprintf(stderr, "cut_proxy: cannot connect to %s:%s (%s): reset the client\n",
                   o_.connect_host.c_str(), o_.connect_port.c_str(), std::strerror(errno));
      reset(c);
      return;
    }
    set_nonblocking(c);
    set_nonblocking(u);
    auto conn = std::make_unique<Connection>();
    conn->number = ++accepted_;
    conn->client = c;
    conn->upstream = u;
    conns_.push_back(std::move(conn));
    say("accepted connection " + std::to_string(accepted_));
  }

  // Resets every connection; returns how many there were.
  int cut_all() {
    const int n = static_cast<int>(conns_.size());
    for (auto& c : conns_) {
      reset(c->client);
      reset(c->upstream);
    }
    conns_.clear();
    return n;
  }

  // Applies the signals that arrived; true if it cut connections.
  bool on_signal() {
    bool cut = false;
    signalfd_siginfo si{};
    while (::read(signals_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      if (si.ssi_signo == SIGUSR1) {
        say("cut " + std::to_string(cut_all()) + " connections");
        cut = true;
      } else if (si.ssi_signo == SIGUSR2) {
        down_ = !down_;
        if (down_) {
          say("down, reset " + std::to_string(cut_all()) + " connections");
          cut = true;
        } else {
          say("up");
        }
      }
    }
    return cut;
  }

  const Options& o_;
  int listener_, signals_;
  bool down_ = false;
  int accepted_ = 0;
  std::vector<std::unique_ptr<Connection>> conns_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--listen") {
      if (!split(argv[i + 1], o.listen_host, o.listen_port)) return 2;
    } else if (flag == "--connect") {
      if (!split(argv[i + 1], o.connect_host, o.connect_port)) return 2;
    } else {
      std::fprintf(stderr, "cut_proxy: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (o.connect_host.empty() || argc % 2 == 0) {
    std::fprintf(stderr, "usage: cut_proxy --listen HOST:PORT --connect HOST:PORT\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGUSR2);
  ::sigprocmask(SIG_BLOCK, &mask, nullptr);
  const int signals = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signals < 0) {
    std::perror("cut_proxy: signalfd");
    return 1;
  }

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (::getaddrinfo(o.listen_host.c_str(), o.listen_port.c_str(), &hints, &res) != 0) {
    std::fprintf(stderr, "cut_proxy: cannot resolve %s\n", o.listen_host.c_str());
    return 2;
  }
  const int lfd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  const int one = 1;
  if (lfd >= 0) ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (lfd < 0 || ::bind(lfd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(lfd, 64) != 0) {
    std::fprintf(stderr, "cut_proxy: cannot listen on %s:%s: %s\n", o.listen_host.c_str(),
                 o.listen_port.c_str(), std::strerror(errno));
    return 2;
  }
  ::freeaddrinfo(res);
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &len);
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (bound.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&bound);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&bound);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
  }
  std::printf("listening on %s:%d\n", host, port);
  std::fflush(stdout);
  Relay(o, lfd, signals).run();
}
