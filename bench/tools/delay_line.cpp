// delay_line: a TCP relay that holds every chunk for a fixed delay (plus jitter) in each
// direction, with unlimited buffering: a long link on loopback, since this kernel has no netem.
// SIGUSR1 stalls both directions of every connection for --stall-ms without closing anything
// (a link that stops and comes back). Prints "listening on HOST:PORT" once ready, and one line
// per stall on stderr.
//
//   delay_line --listen HOST:PORT --connect HOST:PORT [--delay-ms MS] [--jitter-ms MS]
//              [--stall-ms MS]
//
// One thread per direction reads and stamps each chunk with when it may leave
// (now + delay ± jitter, never before the chunk ahead of it); another writes it then.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string listen_host = "127.0.0.1", listen_port = "0";
  std::string connect_host, connect_port;
  double delay_ms = 10;
  double jitter_ms = 0;
  double stall_ms = 5000;
};

std::atomic<std::int64_t> g_stall_until{0};  // steady_clock ticks; 0 = not stalled
std::atomic<bool> g_stall_requested{false};

void on_usr1(int) {
  g_stall_requested = true;
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "delay_line: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

bool split(const std::string& hp, std::string& host, std::string& port) {
  const auto colon = hp.rfind(':');
  if (colon == std::string::npos) return false;
  host = hp.substr(0, colon);
  port = hp.substr(colon + 1);
  return !host.empty() && !port.empty();
}

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

// Waits while a stall is in force.
void wait_stall() {
  for (;;) {
    const std::int64_t until = g_stall_until;
    if (until == 0 || Clock::now().time_since_epoch().count() >= until) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

struct Chunk {
  Clock::time_point due;
  std::vector<char> bytes;  // empty: end of stream
};

// One direction: from → to, delayed.
class Direction {
 public:
  Direction(int from, int to, const Options& o, unsigned seed)
      : from_(from), to_(to), o_(o), rng_(seed) {}

  void run() {
    std::thread writer([this] { write_loop(); });
    read_loop();
    writer.join();
  }

 private:
  void read_loop() {
    std::uniform_real_distribution<double> jitter(-o_.jitter_ms, o_.jitter_ms);
    Clock::time_point last{};
    for (;;) {
      Chunk c;
      c.bytes.resize(256 * 1024);
      const ssize_t n = ::read(from_, c.bytes.data(), c.bytes.size());
      c.bytes.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
      const double ms = o_.delay_ms + (o_.jitter_ms > 0 ? jitter(rng_) : 0.0);
      c.due = std::max(last, Clock::now() + std::chrono::microseconds(
                                                static_cast<long>(std::max(0.0, ms) * 1000)));
      last = c.due;
      const bool end = c.bytes.empty();
      {
        std::lock_guard lock(mu_);
        queue_.push_back(std::move(c));
      }
      cv_.notify_one();
      if (end) return;
    }
  }

  void write_loop() {
    for (;;) {
      Chunk c;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        c = std::move(queue_.front());
        queue_.pop_front();
      }
      std::this_thread::sleep_until(c.due);
      wait_stall();
      if (c.bytes.empty()) {
        ::shutdown(to_, SHUT_WR);
        return;
      }
      std::size_t off = 0;
      while (off < c.bytes.size()) {
        const ssize_t n = ::send(to_, c.bytes.data() + off, c.bytes.size() - off, MSG_NOSIGNAL);
        if (n <= 0) {
          ::shutdown(from_, SHUT_RD);  // the reader sees the end and stops
          return;
        }
        off += static_cast<std::size_t>(n);
      }
    }
  }

  int from_, to_;
  const Options& o_;
  std::mt19937 rng_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> queue_;
};

void serve(int client, const Options& o, unsigned seed) {
  const int upstream = connect_to(o.connect_host, o.connect_port);
  if (upstream < 0) {
    std::fprintf(stderr, "delay_line: cannot connect to %s:%s\n", o.connect_host.c_str(),
                 o.connect_port.c_str());
    ::close(client);
    return;
  }
  const int one = 1;
  ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Direction up(client, upstream, o, seed), down(upstream, client, o, seed + 1);
  std::thread t([&] { up.run(); });
  down.run();
  t.join();
  ::close(client);
  ::close(upstream);
}

double number(const char* flag, const char* value) {
  char* end = nullptr;
  const double v = std::strtod(value, &end);
  if (end == value || *end != '\0' || !(v >= 0) || v > 1e7) {
    std::fprintf(stderr, "delay_line: %s needs a number of milliseconds, not '%s'\n", flag, value);
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--listen") {
      if (!split(argv[i + 1], o.listen_host, o.listen_port)) return 2;
    } else if (flag == "--connect") {
      if (!split(argv[i + 1], o.connect_host, o.connect_port)) return 2;
    } else if (flag == "--delay-ms") {
      o.delay_ms = number("--delay-ms", argv[i + 1]);
    } else if (flag == "--jitter-ms") {
      o.jitter_ms = number("--jitter-ms", argv[i + 1]);
    } else if (flag == "--stall-ms") {
      o.stall_ms = number("--stall-ms", argv[i + 1]);
    } else {
      std::fprintf(stderr, "delay_line: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (o.connect_host.empty()) {
    std::fprintf(stderr,
                 "usage: delay_line --listen HOST:PORT --connect HOST:PORT [--delay-ms MS] "
                 "[--jitter-ms MS] [--stall-ms MS]\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_usr1;
  ::sigaction(SIGUSR1, &sa, nullptr);

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (::getaddrinfo(o.listen_host.c_str(), o.listen_port.c_str(), &hints, &res) != 0) {
    std::fprintf(stderr, "delay_line: cannot resolve %s\n", o.listen_host.c_str());
    return 2;
  }
  const int lfd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (lfd < 0 || ::bind(lfd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(lfd, 64) != 0) {
    die("listen");
  }
  ::freeaddrinfo(res);
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &len);
  char host[64] = "?";
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
  std::printf("listening on %s:%d (delay %.1f ms ± %.1f ms each way)\n", host, port, o.delay_ms,
              o.jitter_ms);
  std::fflush(stdout);

  // The stall clock: a signal handler may only set a flag; this thread turns it into a deadline.
  std::thread([&o] {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (!g_stall_requested.exchange(false)) continue;
      const auto until =
          Clock::now() + std::chrono::microseconds(static_cast<long>(o.stall_ms * 1000));
      g_stall_until = until.time_since_epoch().count();
      std::fprintf(stderr, "delay_line: stalled for %.0f ms\n", o.stall_ms);
      std::fflush(stderr);
    }
  }).detach();

  unsigned seed = 1;
  for (;;) {
    const int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR) continue;
      die("accept");
    }
    std::thread(serve, c, std::cref(o), seed += 2).detach();
  }
}
