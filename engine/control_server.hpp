#pragma once
// The control socket of `nbdtunnel migrate`: QMP-style JSON lines on a UNIX socket.
//
//   server → {"QMP":{"version":{"nbdtunnel":"0.1.0"},"capabilities":[]}}      on connect
//   client → {"execute":"NAME","arguments":{...},"id":ANY}      arguments and id optional
//   server → {"return":VALUE,"id":ID} | {"error":{"class":"...","desc":"..."},"id":ID}
//
// "qmp_capabilities" is answered by the server itself and is optional. A bad line gets a
// GenericError reply and the connection stays open; a line over kMaxLine bytes gets an error
// reply and the connection is closed. Each client's commands run one at a time, in order.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "engine/progress.hpp"

namespace nbdtunnel::engine {

// Thrown by a handler to send an error reply of class `error_class` (e.g. "CommandNotFound").
struct ControlError : std::runtime_error {
  ControlError(std::string cls, std::string desc)
      : std::runtime_error(std::move(desc)), error_class(std::move(cls)) {}
  std::string error_class;
};

// All members must be used from the executor's thread (or strand): the server does no locking.
class ControlServer {
 public:
  static constexpr std::size_t kMaxLine = 64 * 1024;

  // Runs one command and returns its "return" value; throws ControlError for an error reply
  // (any other exception becomes a GenericError with its what()).
  using Handler = std::function<boost::asio::awaitable<nlohmann::json>(
      const std::string& command, const nlohmann::json& arguments)>;

  ControlServer(boost::asio::any_io_executor ex, std::string socket_path, Handler handler);
  ~ControlServer();  // stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Creates the socket (mode 0600) and starts accepting. Replaces a stale socket file; refuses a
  // path where a server is listening or that is not a socket. Throws std::runtime_error.
  void start();
  // Closes the listener and every client, unlinks the socket file. Idempotent.
  void stop();

  std::size_t clients() const;
  const std::string& socket_path() const;

  struct State;

 private:
  std::shared_ptr<State> s_;
};

// The reply to query-migration, the same for both engines: phase, id, bandwidth, and per disk
// done/total/ready.
nlohmann::json query_migration_reply(std::string_view phase, std::string_view migration_id,
                                     double bandwidth_mib, const std::vector<DiskProgress>& disks);

}  // namespace nbdtunnel::engine
