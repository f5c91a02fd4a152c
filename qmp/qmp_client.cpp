#include "qmp/qmp_client.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/system/system_error.hpp>

#include "qmp/qmp_session.hpp"
#include "qmp/qmp_text.hpp"

namespace nbdtunnel::qmp {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;
using nlohmann::json;
using Phase = QmpError::Phase;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Reads one JSON object during the handshake (before the background reader runs).
asio::awaitable<json> read_handshake_message(QmpSession& s, asio::steady_timer& deadline,
                                             Phase phase, std::chrono::milliseconds timeout) {
  const char* what = phase == Phase::greeting ? "greeting" : "capabilities reply";
  while (true) {
    auto r = s.splitter.next();
    if (r.status == JsonLineSplitter::Status::line) {
      json msg = json::parse(r.text, nullptr, false);
      if (!msg.is_discarded() && msg.is_object()) co_return msg;
      throw QmpError(phase, phase == Phase::greeting
                                ? fmt::format("{} is not a QMP socket: its first line is not a "
                                              "JSON object: {}",
                                              s.path, snippet(r.text))
                                : fmt::format("QMP peer on {} sent a malformed line during "
                                              "capabilities negotiation: {}",
                                              s.path, snippet(r.text)));
    }
    if (r.status == JsonLineSplitter::Status::error) {
      throw QmpError(phase, fmt::format("{} is not a QMP socket: {}", s.path, r.text));
    }
    std::array<char, 4096> buf;
    auto rr = co_await (s.socket.async_read_some(asio::buffer(buf), kTuple) ||
                        deadline.async_wait(kTuple));
    if (rr.index() == 1) {
      throw QmpError(Phase::timeout,
                     fmt::format("no QMP {} from {} within {} ms; check that this is a QMP monitor "
                                 "socket and that no other client is connected to it",
                                 what, s.path, timeout.count()));
    }
    auto [ec, n] = std::get<0>(rr);
    if (ec) {
      throw QmpError(phase, fmt::format("{} closed the connection before sending a QMP {} ({}); "
                                        "check that it is a QMP monitor socket",
                                        s.path, what, ec.message()));
    }
    s.splitter.feed({buf.data(), n});
  }
}

// Connect + greeting + qmp_capabilities, all under one deadline.
asio::awaitable<void> handshake(QmpSession& s, std::chrono::milliseconds timeout) {
  asio::steady_timer deadline(s.executor, timeout);
  const asio::local::stream_protocol::endpoint ep(s.path);
  auto cr = co_await (s.socket.async_connect(ep, kTuple) || deadline.async_wait(kTuple));
  if (cr.index() == 1) {
    throw QmpError(Phase::timeout, fmt::format("connecting to QMP socket {} timed out after {} ms",
                                               s.path, timeout.count()));
  }
  if (auto [ec] = std::get<0>(cr); ec) {
    throw QmpError(Phase::connect,
                   fmt::format("cannot connect to QMP socket {}: {}; check that QEMU is running "
                               "with a QMP monitor on this path",
                               s.path, ec.message()));
  }

  s.greeting = co_await read_handshake_message(s, deadline, Phase::greeting, timeout);
  if (!s.greeting.contains("QMP")) {
    throw QmpError(Phase::greeting,
                   fmt::format("{} is not a QMP socket: expected a greeting with \"QMP\", got {}",
                               s.path, snippet(dump(s.greeting))));
  }

  const auto id = s.next_id++;
  json negotiate = {{"execute", "qmp_capabilities"}, {"id", id}};  // named: DESIGN-NOTES, GCC 12
  const std::string line = dump(negotiate) + "\n";
  auto wr = co_await (asio::async_write(s.socket, asio::buffer(line), kTuple) ||
                      deadline.async_wait(kTuple));
  if (wr.index() == 1) {
    throw QmpError(Phase::timeout,
                   fmt::format("sending qmp_capabilities to {} timed out after {} ms", s.path,
                               timeout.count()));
  }
  if (auto [ec, n] = std::get<0>(wr); ec) {
    throw QmpError(Phase::negotiation,
                   fmt::format("sending qmp_capabilities to {} failed: {}", s.path, ec.message()));
  }

  while (true) {
    json msg = co_await read_handshake_message(s, deadline, Phase::negotiation, timeout);
    if (msg.contains("event")) {
      s.route_event(std::move(msg));
      continue;
    }
    if (msg.value("id", json()) != json(id)) continue;
    if (msg.contains("return")) co_return;
    const auto& err = msg.contains("error") ? msg["error"] : json();
    const auto cls = string_field(err, "class");
    throw QmpError(Phase::negotiation,
                   fmt::format("QMP capabilities negotiation on {} failed: {}: {}", s.path,
                               cls.empty() ? "(no class)" : cls, string_field(err, "desc")),
                   cls);
  }
}

}  // namespace

QmpClient::QmpClient(asio::any_io_executor ex, QmpLimits limits)
    : s_(std::make_shared<QmpSession>(std::move(ex), limits)) {}

QmpClient::~QmpClient() {
  close();
}

asio::awaitable<void> QmpClient::connect(std::string socket_path,
                                         std::chrono::milliseconds timeout) {
  auto s = s_;  // keeps the session alive even if the client is destroyed meanwhile
  if (s->connected || s->shut_down) {
    throw QmpError(
        Phase::connect,
        fmt::format("cannot connect to {}: this QmpClient was already {}; create a "
                    "new client to reconnect",
                    socket_path, s->path.empty() ? "closed" : "connected to " + s->path));
  }
  s->path = std::move(socket_path);
  s->splitter.reset();
  try {
    co_await handshake(*s, timeout);
  } catch (const boost::system::system_error& e) {
    boost::system::error_code ignored;
    s->socket.close(ignored);
    throw QmpError(Phase::connect,
                   fmt::format("cannot connect to QMP socket {}: {}", s->path, e.code().message()));
  } catch (...) {
    boost::system::error_code ignored;
    s->socket.close(ignored);
    throw;
  }
  if (s->shut_down) {  // close() ran during the handshake
    throw QmpError(Phase::disconnect,
                   fmt::format("QMP client for {} was closed while connecting", s->path));
  }
  s->connected = true;
  spdlog::debug("QMP {}: connected to QEMU {}", s->path, qemu_version());
  s->start_reader();
}

asio::awaitable<json> QmpClient::execute(std::string command, json arguments,
                                         std::chrono::milliseconds timeout) {
  auto s = s_;
  if (!s->connected) {
    throw QmpError(Phase::disconnect,
                   s->shut_down ? fmt::format("cannot run QMP command '{}': the connection to {} "
                                              "is closed ({})",
                                              command, s->path, s->shutdown_reason)
                                : fmt::format("cannot run QMP command '{}': the client is not "
                                              "connected; call connect() first",
                                              command));
  }
  const auto id = s->next_id++;
  json msg = {{"execute", command}, {"id", id}};
  if (!arguments.is_null()) msg["arguments"] = std::move(arguments);
  auto cmd = std::make_shared<PendingCommand>(s->executor, command);
  cmd->wake.expires_after(timeout);
  s->pending.emplace(id, cmd);
  s->send(dump(msg) + "\n");

  auto [ec] = co_await cmd->wake.async_wait(kTuple);
  if (cmd->reply) co_return std::move(*cmd->reply);
  if (cmd->error) throw *cmd->error;
  s->pending.erase(id);
  if (ec == asio::error::operation_aborted) {
    throw boost::system::system_error(ec, fmt::format("QMP command '{}' cancelled", command));
  }
  throw QmpError(Phase::timeout,
                 fmt::format("QMP command '{}' on {} got no reply within {} ms; QEMU may be busy "
                             "or hung: check it, or retry with a longer timeout",
                             command, s->path, timeout.count()));
}

asio::awaitable<json> QmpClient::wait_event(std::string name, EventMatch match,
                                            std::chrono::milliseconds timeout) {
  auto s = s_;
  for (auto it = s->events.begin(); it != s->events.end(); ++it) {
    if (!QmpSession::matches(*it, name, match)) continue;
    json event = std::move(*it);
    s->events.erase(it);
    co_return event;
  }
  if (!s->connected) {
    throw QmpError(Phase::disconnect,
                   fmt::format("cannot wait for QMP event {}: not connected to {}{}", name,
                               s->path.empty() ? "a socket" : s->path,
                               s->shut_down ? fmt::format(" ({})", s->shutdown_reason) : ""));
  }
  auto waiter = std::make_shared<EventWaiter>(s->executor, name, std::move(match));
  waiter->wake.expires_after(timeout);
  s->waiters.push_back(waiter);

  auto [ec] = co_await waiter->wake.async_wait(kTuple);
  if (waiter->event) co_return std::move(*waiter->event);
  if (waiter->error) throw *waiter->error;
  s->waiters.remove(waiter);
  if (ec == asio::error::operation_aborted) {
    throw boost::system::system_error(ec, fmt::format("wait for QMP event {} cancelled", name));
  }
  throw QmpError(Phase::timeout,
                 fmt::format("no matching QMP event {} on {} within {} ms ({} other events queued)",
                             name, s->path, timeout.count(), s->events.size()));
}

std::vector<json> QmpClient::take_events() {
  std::vector<json> out(std::make_move_iterator(s_->events.begin()),
                        std::make_move_iterator(s_->events.end()));
  s_->events.clear();
  return out;
}

void QmpClient::on_event(EventCallback callback) {
  s_->on_event = std::move(callback);
}

const json& QmpClient::greeting() const {
  return s_->greeting;
}

std::string QmpClient::qemu_version() const {
  const auto& g = s_->greeting;
  try {
    const auto& q = g.at("QMP").at("version").at("qemu");
    return fmt::format("{}.{}.{}", q.at("major").get<long long>(), q.at("minor").get<long long>(),
                       q.at("micro").get<long long>());
  } catch (const json::exception&) {
    return {};
  }
}

const std::string& QmpClient::socket_path() const {
  return s_->path;
}

int QmpClient::peer_pid() const {
  if (!s_->connected || !s_->socket.is_open()) return -1;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(s_->socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return -1;
  }
  return cred.pid > 0 ? static_cast<int>(cred.pid) : -1;
}

bool QmpClient::is_connected() const {
  return s_->connected;
}

std::uint64_t QmpClient::events_dropped() const {
  return s_->events_dropped;
}

asio::any_io_executor QmpClient::get_executor() const {
  return s_->executor;
}

void QmpClient::close() {
  if (s_) s_->shutdown("closed by the client");
}

}  // namespace nbdtunnel::qmp
