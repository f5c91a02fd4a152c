#pragma once

// Internal to qmp/: the state a QmpClient shares with its background reader and writer.
// Background coroutines hold a shared_ptr, so the client can be destroyed while they unwind.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>

#include "qmp/qmp_client.hpp"

namespace nbdtunnel::qmp {

// One command awaiting its reply; the waiter sleeps on `wake` until the reply, an error or expiry.
struct PendingCommand {
  explicit PendingCommand(const boost::asio::any_io_executor& ex, std::string cmd)
      : command(std::move(cmd)), wake(ex) {}
  std::string command;
  boost::asio::steady_timer wake;
  std::optional<nlohmann::json> reply;
  std::optional<QmpError> error;
};

// One wait_event() call waiting for an event that has not arrived yet.
struct EventWaiter {
  EventWaiter(const boost::asio::any_io_executor& ex, std::string n, QmpClient::EventMatch m)
      : name(std::move(n)), match(std::move(m)), wake(ex) {}
  std::string name;
  QmpClient::EventMatch match;
  boost::asio::steady_timer wake;
  std::optional<nlohmann::json> event;
  std::optional<QmpError> error;
};

struct QmpSession : std::enable_shared_from_this<QmpSession> {
  QmpSession(boost::asio::any_io_executor ex, QmpLimits lim)
      : executor(ex), socket(ex), limits(lim), splitter(lim.max_line_bytes) {}

  // True if `event` is called `name` and `match` (if any) accepts it.
  static bool matches(const nlohmann::json& event, const std::string& name,
                      const QmpClient::EventMatch& match);

  void start_reader();
  // Queues one line for the writer coroutine (which it starts if idle).
  void send(std::string line);
  // Handles one line from the peer; returns false if the line is not a QMP message.
  bool dispatch(const std::string& line);
  void route_event(nlohmann::json event);
  // Closes the socket and fails every pending command and waiter with QmpError(disconnect).
  void shutdown(const std::string& reason);

  boost::asio::any_io_executor executor;
  boost::asio::local::stream_protocol::socket socket;
  QmpLimits limits;
  JsonLineSplitter splitter;
  std::string path;
  nlohmann::json greeting;
  bool connected = false;  // handshake finished and not shut down
  bool shut_down = false;
  std::string shutdown_reason;
  std::uint64_t next_id = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<PendingCommand>> pending;
  std::deque<nlohmann::json> events;
  std::list<std::shared_ptr<EventWaiter>> waiters;
  QmpClient::EventCallback on_event;
  std::uint64_t events_dropped = 0;
  std::deque<std::string> outbox;
  bool writing = false;
};

}  // namespace nbdtunnel::qmp
