#include "socket_rig.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {
namespace {

constexpr std::size_t kIoBuf = 1 << 20;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

// A connected TCP loopback pair: {client end, accepted server end}.
std::pair<int, int> tcp_pair() {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0) fail("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) fail("bind");
  if (listen(l, 1) < 0) fail("listen");
  socklen_t len = sizeof a;
  getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) fail("connect");
  int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
  if (s < 0) fail("accept");
  close(l);
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return {c, s};
}

double thread_cpu_seconds(std::thread& t) {
  clockid_t id;
  if (pthread_getcpuclockid(t.native_handle(), &id) != 0) return 0.0;
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

SocketRig::SocketRig(Direction d) {
  auto [tcp_client, tcp_server] = tcp_pair();
  int ux[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ux) < 0) fail("socketpair");
  if (d == Direction::tcp_to_unix) {
    producer_fd_ = tcp_client;  // the remote peer writes into the channel
    relay_in_ = tcp_server;
    relay_out_ = ux[0];
    consumer_fd_ = ux[1];  // the local QEMU reads
  } else {
    producer_fd_ = ux[1];  // the local QEMU writes
    relay_in_ = ux[0];
    relay_out_ = tcp_server;
    consumer_fd_ = tcp_client;  // the remote peer reads
  }
  producer_ = std::thread([this] { producer_loop(); });
  consumer_ = std::thread([this] { consumer_loop(); });
}

SocketRig::~SocketRig() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  producer_.join();
  shutdown(relay_out_, SHUT_WR);  // the consumer sees EOF
  consumer_.join();
  for (int fd : {relay_in_, relay_out_, producer_fd_, consumer_fd_}) close(fd);
}

void SocketRig::produce(std::uint64_t n) {
  {
    std::lock_guard lk(mu_);
    requested_ += n;
  }
  cv_.notify_all();
}

void SocketRig::wait_consumed(std::uint64_t total) {
  std::unique_lock lk(mu_);
  wait_target_ = total;
  cv_.wait(lk, [&] { return consumed_.load() >= total; });
}

double SocketRig::helper_cpu_seconds() const {
  auto* self = const_cast<SocketRig*>(this);
  return thread_cpu_seconds(self->producer_) + thread_cpu_seconds(self->consumer_);
}

void SocketRig::producer_loop() {
  std::vector<char> buf(kIoBuf, 'p');
  std::uint64_t sent = 0;
  for (;;) {
    std::uint64_t target;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || requested_ > sent; });
      if (stop_) return;
      target = requested_;
    }
    while (sent < target) {
      std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(kIoBuf, target - sent));
      ssize_t w = write(producer_fd_, buf.data(), want);
      if (w <= 0) return;
      sent += static_cast<std::uint64_t>(w);
    }
  }
}

void SocketRig::consumer_loop() {
  std::vector<char> buf(kIoBuf);
  for (;;) {
    ssize_t r = read(consumer_fd_, buf.data(), buf.size());
    if (r <= 0) return;
    std::uint64_t now =
        consumed_.fetch_add(static_cast<std::uint64_t>(r)) + static_cast<std::uint64_t>(r);
    std::uint64_t target;
    {
      std::lock_guard lk(mu_);
      target = wait_target_;
    }
    if (target != 0 && now >= target) cv_.notify_all();
  }
}

}  // namespace bench
