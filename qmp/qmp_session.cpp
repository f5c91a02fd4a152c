#include "qmp/qmp_session.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <vector>

#include "qmp/qmp_text.hpp"

namespace nbdtunnel::qmp {

namespace asio = boost::asio;
using nlohmann::json;

namespace {

constexpr std::size_t kReadChunk = 64 * 1024;

// Reads from the socket until it fails, dispatching each complete line.
asio::awaitable<void> read_loop(std::shared_ptr<QmpSession> s) {
  std::vector<char> buf(kReadChunk);
  while (!s->shut_down) {
    while (true) {
      auto r = s->splitter.next();
      if (r.status == JsonLineSplitter::Status::need_more) break;
      if (r.status == JsonLineSplitter::Status::error) {
        spdlog::warn("QMP {}: {}; closing the connection", s->path, r.text);
        s->shutdown(r.text);
        co_return;
      }
      if (!s->dispatch(r.text)) {
        auto reason =
            fmt::format("QEMU sent a line that is not a JSON object: {}", snippet(r.text));
        spdlog::warn("QMP {}: {}; closing the connection", s->path, reason);
        s->shutdown(reason);
        co_return;
      }
      if (s->shut_down) co_return;  // an event callback closed the client
    }
    auto [ec, n] =
        co_await s->socket.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
    if (s->shut_down) co_return;
    if (ec) {
      auto reason =
          ec == asio::error::eof
              ? std::string("QEMU closed the connection; check that QEMU is still running")
              : fmt::format("read failed: {}", ec.message());
      spdlog::warn("QMP {}: {}", s->path, reason);
      s->shutdown(reason);
      co_return;
    }
    s->splitter.feed({buf.data(), n});
  }
}

// Writes queued lines one at a time so concurrent commands never interleave bytes.
asio::awaitable<void> write_loop(std::shared_ptr<QmpSession> s) {
  while (!s->outbox.empty() && !s->shut_down) {
    auto [ec, n] = co_await asio::async_write(s->socket, asio::buffer(s->outbox.front()),
                                              asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (!s->shut_down) {
        spdlog::warn("QMP {}: write failed: {}", s->path, ec.message());
        s->shutdown(fmt::format("write failed: {}", ec.message()));
      }
      break;
    }
    s->outbox.pop_front();
  }
  if (s->shut_down) s->outbox.clear();
  s->writing = false;
}

}  // namespace

bool QmpSession::matches(const json& event, const std::string& name,
                         const QmpClient::EventMatch& match) {
  if (string_field(event, "event") != name) return false;
  if (!match) return true;
  try {
    return match(event);
  } catch (const std::exception& e) {
    spdlog::warn("QMP event matcher for {} threw ({}); treating the event as no match", name,
                 e.what());
    return false;
  }
}

void QmpSession::start_reader() {
  asio::co_spawn(executor, read_loop(shared_from_this()), asio::detached);
}

void QmpSession::send(std::string line) {
  if (shut_down) return;
  outbox.push_back(std::move(line));
  if (writing) return;
  writing = true;
  asio::co_spawn(executor, write_loop(shared_from_this()), asio::detached);
}

bool QmpSession::dispatch(const std::string& line) {
  json msg = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (msg.is_discarded() || !msg.is_object()) return false;
  if (msg.contains("event")) {
    route_event(std::move(msg));
    return true;
  }
  const auto id_it = msg.find("id");
  if (id_it == msg.end() || !id_it->is_number_unsigned()) {
    spdlog::warn("QMP {}: ignoring a message without one of our ids: {}", path, snippet(line));
    return true;
  }
  const auto it = pending.find(id_it->get<std::uint64_t>());
  if (it == pending.end()) {
    spdlog::debug("QMP {}: reply for id {} arrived after its command gave up", path, id_it->dump());
    return true;
  }
  auto cmd = it->second;
  pending.erase(it);
  if (auto ret = msg.find("return"); ret != msg.end()) {
    cmd->reply = std::move(*ret);
  } else if (auto err = msg.find("error"); err != msg.end()) {
    const auto cls = string_field(*err, "class");
    cmd->error.emplace(QmpError::Phase::execute,
                       fmt::format("QMP command '{}' on {} failed: {}: {}", cmd->command, path,
                                   cls.empty() ? "(no class)" : cls, string_field(*err, "desc")),
                       cls);
  } else {
    cmd->error.emplace(QmpError::Phase::execute,
                       fmt::format("QMP command '{}' on {} got a reply with neither \"return\" nor "
                                   "\"error\": {}",
                                   cmd->command, path, snippet(line)));
  }
  cmd->wake.cancel();
  return true;
}

void QmpSession::route_event(json event) {
  if (on_event) {
    try {
      on_event(event);
    } catch (const std::exception& e) {
      spdlog::warn("QMP {}: event callback threw: {}", path, e.what());
    }
  }
  for (auto it = waiters.begin(); it != waiters.end(); ++it) {
    auto& w = **it;
    if (w.event || w.error || !matches(event, w.name, w.match)) continue;
    w.event = std::move(event);
    w.wake.cancel();
    waiters.erase(it);
    return;
  }
  if (events.size() >= limits.max_queued_events) {
    ++events_dropped;
    if (events_dropped == 1 || events_dropped % 1024 == 0) {
      spdlog::warn(
          "QMP {}: event queue full ({} events), dropping the oldest ({} dropped so far); "
          "drain it with wait_event() or take_events()",
          path, limits.max_queued_events, events_dropped);
    }
    if (events.empty()) return;  // a limit of 0 keeps nothing
    events.pop_front();
  }
  events.push_back(std::move(event));
}

void QmpSession::shutdown(const std::string& reason) {
  if (shut_down) return;
  shut_down = true;
  connected = false;
  shutdown_reason = reason;
  boost::system::error_code ignored;
  socket.close(ignored);
  auto cmds = std::move(pending);
  pending.clear();
  for (auto& [id, cmd] : cmds) {
    cmd->error.emplace(QmpError::Phase::disconnect,
                       fmt::format("QMP connection to {} closed while command '{}' was pending: {}",
                                   path, cmd->command, reason));
    cmd->wake.cancel();
  }
  auto ws = std::move(waiters);
  waiters.clear();
  for (auto& w : ws) {
    w->error.emplace(QmpError::Phase::disconnect,
                     fmt::format("QMP connection to {} closed while waiting for event {}: {}", path,
                                 w->name, reason));
    w->wake.cancel();
  }
}

}  // namespace nbdtunnel::qmp
