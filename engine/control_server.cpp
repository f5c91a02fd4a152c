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
#include <set>
#include <vector>

#include "engine/control_command.hpp"
#include "qmp/json_lines.hpp"
#include "tunnel/unix_socket.hpp"

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

json return_reply(json value) {
  return {{"return", std::move(value)}};
}

json greeting() {
  return {
      {"QMP", {{"version", {{"nbdtunnel", NBDTUNNEL_VERSION}}}, {"capabilities", json::array()}}}};
}

// Runs one command and returns its reply (without "id").
asio::awaitable<json> run_command(State& s, const ControlCommand& request) {
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
  co_return control_error_reply(cls, desc);
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
      ControlCommand request;
      json reply;
      if (parse_control_command(next.text, request, reply))
        reply = co_await run_command(*s, request);
      if (request.id) reply["id"] = std::move(*request.id);
      if (s->stopped) break;
      open = co_await send(*c, reply);
    } else if (next.status == qmp::JsonLineSplitter::Status::error) {
      const json reply = control_error_reply(
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
  // The same rules as every socket nbdtunnel creates: a stale file is replaced, a live socket or
  // anything else is refused, and the socket is never open wider than 0600.
  tunnel::Result<tunnel::unique_fd> listener = tunnel::listen_unix(s.path, 0600);
  if (!listener) throw socket_error(s.path, listener.error().message);
  tunnel::unique_fd fd = std::move(*listener);
  boost::system::error_code ec;
  local::acceptor acceptor(s.ex);
  if (::lstat(s.path.c_str(), &s.created) != 0) ec = errno_code();
  if (!ec) acceptor.assign(local(), fd.get(), ec);
  if (ec) {
    ::unlink(s.path.c_str());
    throw socket_error(s.path, fmt::format("cannot set it up: {}", ec.message()));
  }
  fd.release();  // the acceptor owns it now
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

nlohmann::json query_migration_reply(std::string_view phase, std::string_view migration_id,
                                     double bandwidth_mib, const std::vector<DiskProgress>& disks) {
  nlohmann::json rows = nlohmann::json::array();
  for (const DiskProgress& d : disks) {
    nlohmann::json j = nlohmann::json::object();
    j["disk"] = d.disk;
    j["done"] = d.done;
    j["total"] = d.total;
    j["ready"] = d.ready;
    rows.push_back(j);
  }
  nlohmann::json out = nlohmann::json::object();
  out["phase"] = phase;
  out["migration-id"] = migration_id;
  out["bandwidth-mib-s"] = bandwidth_mib;
  out["disks"] = rows;
  return out;
}

}  // namespace nbdtunnel::engine
