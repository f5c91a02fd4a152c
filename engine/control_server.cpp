#include "engine/control_server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>
#include <optional>
#include <set>
#include <vector>

#include "qmp/json_lines.hpp"

#ifndef NBDTUNNEL_VERSION
#define NBDTUNNEL_VERSION "unknown"
#endif

namespace nbdtunnel::engine {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using nlohmann::json;

namespace {

struct Client {
  explicit Client(local::socket s) : socket(std::move(s)), splitter(ControlServer::kMaxLine) {}
  local::socket socket;
  qmp::JsonLineSplitter splitter;
};

}  // namespace

// Shared by the server and its coroutines: a coroutine that completes after the server is gone
// still finds its state alive.
struct ControlServer::State {
  State(asio::any_io_executor e, std::string p, Handler h)
      : ex(std::move(e)), path(std::move(p)), handler(std::move(h)), acceptor(ex) {}

  asio::any_io_executor ex;
  std::string path;
  Handler handler;
  local::acceptor acceptor;
  std::set<std::shared_ptr<Client>> clients;
  bool started = false;
  bool stopped = false;
  struct stat created {};  // the socket file we bound, so stop() never unlinks someone else's
};

namespace {

using State = ControlServer::State;
constexpr std::size_t kMaxLine = ControlServer::kMaxLine;

boost::system::error_code errno_code() {
  return {errno, boost::system::system_category()};
}

std::runtime_error socket_error(const std::string& path, const std::string& what) {
  return std::runtime_error(fmt::format("control socket {}: {}", path, what));
}

// True if a server accepts connections at `path`; false if the socket file is stale.
bool someone_listens(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) throw socket_error(path, fmt::format("socket() failed: {}", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = rc == 0 ? 0 : errno;
  ::close(fd);
  if (err == 0 || err == EAGAIN || err == EINPROGRESS) return true;  // EAGAIN: backlog full
  if (err == ECONNREFUSED || err == ENOENT) return false;
  throw socket_error(path, fmt::format("cannot check whether it is in use: {}; remove it or "
                                       "choose another path",
                                       std::strerror(err)));
}

// Makes `path` free for bind(): removes a stale socket, refuses anything else.
void clear_path(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw socket_error(path, fmt::format("cannot inspect the path: {}", std::strerror(errno)));
  }
  if (!S_ISSOCK(st.st_mode)) {
    throw socket_error(path, "the path exists and is not a socket; remove it or choose another");
  }
  if (someone_listens(path)) {
    throw socket_error(path,
                       "another process is listening on it (another migration?); stop it "
                       "or choose another path");
  }
  spdlog::info("control socket {}: replacing a stale socket file", path);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw socket_error(path,
                       fmt::format("cannot remove the stale socket: {}", std::strerror(errno)));
  }
}

json error_reply(std::string_view cls, std::string_view desc) {
  return {{"error", {{"class", cls}, {"desc", desc}}}};
}

json return_reply(json value) {
  return {{"return", std::move(value)}};
}

json greeting() {
  return {
      {"QMP", {{"version", {{"nbdtunnel", NBDTUNNEL_VERSION}}}, {"capabilities", json::array()}}}};
}

struct Request {
  std::string command;
  json arguments = json::object();
  std::optional<json> id;
};

// Parses one request line; false with `error` set to the reply if it is not a valid command.
// (Kept out of the coroutines: GCC 12 mishandles braced temporaries inside them.)
bool parse_request(const std::string& line, Request& request, json& error) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    error = error_reply("GenericError", fmt::format("the line is not valid JSON: {}", e.what()));
    return false;
  }
  if (!j.is_object()) {
    error = error_reply("GenericError",
                        R"(a command must be a JSON object: {"execute":"NAME","arguments":{}})");
    return false;
  }
  if (auto id = j.find("id"); id != j.end()) request.id = std::move(*id);
  const auto execute = j.find("execute");
  if (execute == j.end() || !execute->is_string()) {
    error =
        error_reply("GenericError",
                    R"(the command has no "execute" string: {"execute":"NAME","arguments":{}})");
    return false;
  }
  request.command = execute->get<std::string>();
  if (auto args = j.find("arguments"); args != j.end()) {
    if (!args->is_object()) {
      error =
          error_reply("GenericError",
                      fmt::format(R"("arguments" of '{}' must be a JSON object)", request.command));
      return false;
    }
    request.arguments = std::move(*args);
  }
  return true;
}

// Runs one command and returns its reply (without "id").
asio::awaitable<json> run_command(State& s, const Request& request) {
  if (request.command == "qmp_capabilities") co_return return_reply(json::object());
  spdlog::debug("control socket {}: {} {}", s.path, request.command, request.arguments.dump());
  std::string cls = "GenericError";
  std::string desc;
  try {
    json value = co_await s.handler(request.command, request.arguments);
    co_return return_reply(std::move(value));
  } catch (const ControlError& e) {
    cls = e.error_class;
    desc = e.what();
  } catch (const std::exception& e) {
    desc = fmt::format("'{}' failed: {}", request.command, e.what());
  }
  co_return error_reply(cls, desc);
}

asio::awaitable<bool> send(Client& c, const json& message) {
  const auto text = message.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  auto [ec, n] =
      co_await asio::async_write(c.socket, asio::buffer(text), asio::as_tuple(asio::use_awaitable));
  co_return !ec;
}

// Greets one client, then reads its lines and answers them one at a time.
asio::awaitable<void> serve_client(std::shared_ptr<State> s, std::shared_ptr<Client> c) {
  const json hello = greeting();
  bool open = co_await send(*c, hello);
  std::vector<char> buf(16 * 1024);
  while (open && !s->stopped) {
    auto next = c->splitter.next();
    if (next.status == qmp::JsonLineSplitter::Status::line) {
      Request request;
      json reply;
      if (parse_request(next.text, request, reply)) reply = co_await run_command(*s, request);
      if (request.id) reply["id"] = std::move(*request.id);
      if (s->stopped) break;
      open = co_await send(*c, reply);
    } else if (next.status == qmp::JsonLineSplitter::Status::error) {
      const json reply = error_reply(
          "GenericError",
          fmt::format("a line is longer than {} bytes; closing the connection", kMaxLine));
      co_await send(*c, reply);
      open = false;
    } else {
      auto [ec, n] = co_await c->socket.async_read_some(asio::buffer(buf),
                                                        asio::as_tuple(asio::use_awaitable));
      if (ec) break;  // the client left, or stop() closed the socket
      c->splitter.feed({buf.data(), n});
    }
  }
  boost::system::error_code ignored;
  c->socket.close(ignored);
  s->clients.erase(c);
}

asio::awaitable<void> accept_loop(std::shared_ptr<State> s) {
  while (!s->stopped) {
    auto [ec, socket] = co_await s->acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
    if (s->stopped) break;
    if (ec) {
      // EMFILE and the like: back off rather than spin.
      spdlog::warn("control socket {}: accept failed: {}", s->path, ec.message());
      asio::steady_timer backoff(s->ex, std::chrono::milliseconds(100));
      co_await backoff.async_wait(asio::as_tuple(asio::use_awaitable));
      continue;
    }
    auto c = std::make_shared<Client>(std::move(socket));
    s->clients.insert(c);
    asio::co_spawn(s->ex, serve_client(s, c), asio::detached);
  }
}

}  // namespace

ControlServer::ControlServer(asio::any_io_executor ex, std::string socket_path, Handler handler)
    : s_(std::make_shared<State>(std::move(ex), std::move(socket_path), std::move(handler))) {}

ControlServer::~ControlServer() {
  stop();
}

void ControlServer::start() {
  State& s = *s_;
  if (s.started) throw std::logic_error("ControlServer::start() called twice");
  if (s.path.empty() || s.path.size() >= sizeof(sockaddr_un::sun_path)) {
    throw socket_error(s.path, fmt::format("the path must be 1 to {} bytes long",
                                           sizeof(sockaddr_un::sun_path) - 1));
  }
  clear_path(s.path);

  boost::system::error_code ec;
  local::acceptor acceptor(s.ex);
  acceptor.open(local(), ec);
  // On Linux the mode of the socket's inode becomes the mode of the file bind() creates, so the
  // socket is never open to others, not even between bind() and chmod().
  if (!ec && ::fchmod(acceptor.native_handle(), 0600) != 0) ec = errno_code();
  if (!ec) acceptor.bind(local::endpoint(s.path), ec);
  if (ec) throw socket_error(s.path, fmt::format("cannot create it: {}", ec.message()));
  // The file is ours from here on: remove it if the rest fails.
  if (::chmod(s.path.c_str(), 0600) != 0 || ::lstat(s.path.c_str(), &s.created) != 0) {
    ec = errno_code();
  }
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    ::unlink(s.path.c_str());
    throw socket_error(s.path, fmt::format("cannot set it up: {}", ec.message()));
  }
  s.acceptor = std::move(acceptor);
  s.started = true;
  spdlog::debug("control socket {}: listening", s.path);
  asio::co_spawn(s.ex, accept_loop(s_), asio::detached);
}

void ControlServer::stop() {
  State& s = *s_;
  if (!s.started || s.stopped) return;
  s.stopped = true;
  boost::system::error_code ignored;
  s.acceptor.close(ignored);
  for (const auto& c : s.clients) c->socket.close(ignored);
  s.clients.clear();
  struct stat st {};
  if (::lstat(s.path.c_str(), &st) == 0 && st.st_dev == s.created.st_dev &&
      st.st_ino == s.created.st_ino) {
    ::unlink(s.path.c_str());
  }
}

std::size_t ControlServer::clients() const {
  return s_->clients.size();
}

const std::string& ControlServer::socket_path() const {
  return s_->path;
}

}  // namespace nbdtunnel::engine
