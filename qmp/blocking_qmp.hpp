#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <exception>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "qmp/qmp_client.hpp"

namespace nbdtunnel::qmp {

// A synchronous QMP client for tests and simple tools. It owns an io_context and runs it only
// inside its own calls, so events that arrive meanwhile are picked up by the next call.
class BlockingQmp {
 public:
  using json = nlohmann::json;

  // Connects and negotiates; throws QmpError.
  explicit BlockingQmp(const std::string& socket_path,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10),
                       QmpLimits limits = {});
  ~BlockingQmp();
  BlockingQmp(const BlockingQmp&) = delete;
  BlockingQmp& operator=(const BlockingQmp&) = delete;

  json execute(const std::string& cmd, json args = json::object(),
               std::chrono::milliseconds timeout = std::chrono::seconds(60));
  json wait_event(const std::string& name, std::function<bool(const json&)> match = {},
                  std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Every event received so far, oldest first.
  std::vector<json> take_events();
  // Runs an HMP command line through human-monitor-command and returns its output.
  std::string hmp(const std::string& command_line,
                  std::chrono::milliseconds timeout = std::chrono::seconds(60));
  std::string qemu_version() const { return client_.qemu_version(); }
  const json& greeting() const { return client_.greeting(); }
  void close() { client_.close(); }

  // Runs any QmpClient coroutine (e.g. the block_jobs.hpp helpers) to completion.
  template <class T>
  T run(boost::asio::awaitable<T> op);
  QmpClient& client() { return client_; }

 private:
  // Runs the io_context until `done` is set.
  void drive(const bool& done);

  boost::asio::io_context io_;
  QmpClient client_;
};

template <class T>
T BlockingQmp::run(boost::asio::awaitable<T> op) {
  std::exception_ptr error;
  bool done = false;
  if constexpr (std::is_void_v<T>) {
    boost::asio::co_spawn(io_, std::move(op), [&](std::exception_ptr e) {
      error = e;
      done = true;
    });
    drive(done);
    if (error) std::rethrow_exception(error);
  } else {
    std::optional<T> result;
    boost::asio::co_spawn(io_, std::move(op), [&](std::exception_ptr e, T value) {
      error = e;
      if (!e) result.emplace(std::move(value));
      done = true;
    });
    drive(done);
    if (error) std::rethrow_exception(error);
    return std::move(*result);
  }
}

}  // namespace nbdtunnel::qmp
