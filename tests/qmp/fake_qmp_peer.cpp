#include "fake_qmp_peer.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace nbdtunnel::qmp::test {

using nlohmann::json;

namespace {

// poll() one fd for `events` with a timeout; true if ready.
bool wait_fd(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  int r;
  do {
    r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

}  // namespace

FakeConnection::~FakeConnection() {
  close();
}

void FakeConnection::send_raw(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(std::string("fake peer send: ") + std::strerror(errno));
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
}

std::optional<json> FakeConnection::read_message(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (const auto nl = buf_.find('\n'); nl != std::string::npos) {
      auto line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return json::parse(line);
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !wait_fd(fd_, POLLIN, left)) return std::nullopt;
    char chunk[4096];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) return std::nullopt;
    buf_.append(chunk, static_cast<std::size_t>(n));
  }
}

json FakeConnection::expect_command(const std::string& name) {
  auto msg = read_message();
  if (!msg) throw std::runtime_error("fake peer: no command arrived, expected " + name);
  if (msg->value("execute", "") != name) {
    throw std::runtime_error("fake peer: expected " + name + ", got " + msg->dump());
  }
  return *msg;
}

void FakeConnection::reply(const json& command, const json& value) {
  send({{"return", value}, {"id", command.at("id")}});
}

void FakeConnection::reply_error(const json& command, const std::string& cls,
                                 const std::string& desc) {
  send({{"error", {{"class", cls}, {"desc", desc}}}, {"id", command.at("id")}});
}

void FakeConnection::event(const std::string& name, const json& data) {
  send({{"event", name},
        {"data", data},
        {"timestamp", {{"seconds", 1700000000}, {"microseconds", 1}}}});
}

void FakeConnection::negotiate() {
  send(json::parse(R"({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7},
                       "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}})"));
  reply(expect_command("qmp_capabilities"), json::object());
}

bool FakeConnection::wait_for_eof(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !wait_fd(fd_, POLLIN, left)) return false;
    char chunk[4096];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) return true;
  }
}

void FakeConnection::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

FakeQmpPeer::FakeQmpPeer(Script script) {
  char tmpl[] = "/tmp/qmp-test-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  path_ = dir_ + "/qmp.sock";
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 4) != 0) {
    throw std::runtime_error(std::string("fake peer listen: ") + std::strerror(errno));
  }
  thread_ = std::thread([this, script = std::move(script)] {
    try {
      if (!wait_fd(listen_fd_, POLLIN, 10s)) throw std::runtime_error("no client connected");
      FakeConnection conn(::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC));
      script(conn);
    } catch (const std::exception& e) {
      failure_ = e.what();
    }
  });
}

std::string FakeQmpPeer::join() {
  if (thread_.joinable()) thread_.join();
  return failure_;
}

FakeQmpPeer::~FakeQmpPeer() {
  join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace nbdtunnel::qmp::test
