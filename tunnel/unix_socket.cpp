#include "tunnel/unix_socket.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

namespace nbdtunnel::tunnel {

std::size_t max_unix_path() {
  return sizeof(sockaddr_un::sun_path) - 1;
}

namespace {
bool fill_address(const std::string& path, sockaddr_un& addr) {
  if (path.empty() || path.size() > max_unix_path()) return false;
  addr = sockaddr_un{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return true;
}
}  // namespace

Result<unique_fd> listen_unix(const std::string& path, mode_t mode) {
  sockaddr_un addr;
  if (!fill_address(path, addr)) {
    return input_error(
        fmt::format("socket path '{}' is empty or longer than {} bytes", path, max_unix_path()),
        std::errc::filename_too_long);
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return input_error(
          fmt::format("{} exists and is not a socket; remove it or choose another path", path),
          std::errc::file_exists);
    }
    unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return input_error(
          fmt::format("something is already listening on {}; stop it or choose another path", path),
          std::errc::address_in_use);
    }
    spdlog::info("replacing stale socket file {}", path);
    ::unlink(path.c_str());
  }
  unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return system_error(errno, "socket()");
  // Create it with no access, then open it up to exactly `mode`: no window with looser rights.
  const mode_t old_mask = ::umask(0777);
  const int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  ::umask(old_mask);
  if (rc != 0) return system_error(bind_errno, fmt::format("cannot bind {}", path));
  if (::chmod(path.c_str(), mode) != 0 || ::listen(fd.get(), 128) != 0) {
    Error error = system_error(errno, fmt::format("cannot listen on {}", path));
    ::unlink(path.c_str());
    return error;
  }
  return fd;
}

Acceptor::Acceptor(Ring& ring, unique_fd listener, Handler on_accept)
    : ring_(ring), listener_(std::move(listener)), on_accept_(std::move(on_accept)) {
  op_.set_handler([this](int res, std::uint32_t) { on_complete(res); });
  pause_op_.set_handler([this](int, std::uint32_t) { arm(); });
}

void Acceptor::start() {
  arm();
}

void Acceptor::arm() {
  if (stopped_ || op_.busy()) return;
  io_uring_sqe* sqe = ring_.prepare(op_);
  io_uring_prep_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
}

void Acceptor::on_complete(int res) {
  if (stopped_) {
    if (res >= 0) ::close(res);
    return;
  }
  if (res >= 0) {
    on_accept_(unique_fd(res));
  } else if (res != -EINTR && res != -ECONNABORTED && res != -EAGAIN) {
    on_accept_(system_error(-res, "accept"));
    if (res == -EMFILE || res == -ENFILE) {
      // Accepting again at once would spin: pause 100 ms, then retry.
      spdlog::error("accept on fd {}: {}; retrying in 100 ms", listener_.get(),
                    std::strerror(-res));
      pause_ = __kernel_timespec{0, 100'000'000};
      io_uring_prep_timeout(ring_.prepare(pause_op_), &pause_, 0, 0);
      return;
    }
  }
  arm();
}

void Acceptor::stop() {
  stopped_ = true;
  ::shutdown(listener_.get(), SHUT_RDWR);
  ring_.cancel(op_);
  ring_.cancel(pause_op_);
}

}  // namespace nbdtunnel::tunnel
