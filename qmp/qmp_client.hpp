#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qmp/json_lines.hpp"
#include "qmp/qmp_error.hpp"

namespace nbdtunnel::qmp {

struct QmpLimits {
  std::size_t max_line_bytes = JsonLineSplitter::kDefaultMaxLine;
  std::size_t max_queued_events = 4096;  // oldest event is dropped (with a warning) beyond this
};

struct QmpSession;

// A QMP client on one UNIX socket. Several commands may be in flight at once (matched by id);
// events are queued apart from replies. All members must be used from the client's executor
// (one thread, or a strand): the client itself does no locking.
class QmpClient {
 public:
  using json = nlohmann::json;
  using EventMatch = std::function<bool(const json&)>;
  using EventCallback = std::function<void(const json&)>;

  explicit QmpClient(boost::asio::any_io_executor ex, QmpLimits limits = {});
  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Connects, reads the greeting, negotiates capabilities, then starts the background reader.
  boost::asio::awaitable<void> connect(
      std::string socket_path, std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Runs one command and returns its "return" value; an "error" reply throws QmpError(execute).
  boost::asio::awaitable<json> execute(
      std::string command, json arguments = json::object(),
      std::chrono::milliseconds timeout = std::chrono::seconds(60));

  // Returns (and removes) the first queued or future event called `name` that `match` accepts
  // (an empty match accepts any). Other events stay queued.
  boost::asio::awaitable<json> wait_event(
      std::string name, EventMatch match = {},
      std::chrono::milliseconds timeout = std::chrono::seconds(60));

  // Removes and returns every queued event, oldest first.
  std::vector<json> take_events();

  // Called for every event as it arrives, before it is queued or handed to a waiter.
  void on_event(EventCallback callback);

  const json& greeting() const;
  // "major.minor.micro" from the greeting, or "" before a greeting was read.
  std::string qemu_version() const;
  const std::string& socket_path() const;
  // The pid of the process at the other end of the socket (SO_PEERCRED: QEMU itself, unless a
  // proxy sits in between), or -1 when not connected or unknown.
  int peer_pid() const;
  bool is_connected() const;
  std::uint64_t events_dropped() const;
  boost::asio::any_io_executor get_executor() const;

  // Closes the socket and fails every pending command and event waiter. Idempotent.
  void close();

 private:
  std::shared_ptr<QmpSession> s_;
};

}  // namespace nbdtunnel::qmp
