#pragma once
// Watching a running `nbdtunnel dest`: a thread of its own that serves the control socket
// (`--control-socket`, read by `nbdtunnel status`) and the metrics endpoint (`--metrics-listen`),
// so that a busy or stuck data path never delays a report, and a report never takes a cycle
// from the data path beyond the moment each thread describes its channels.
//
// Control socket (engine/control_server.hpp's protocol): query-status returns
//   {"version":V,"pid":N,"uptime":SECONDS,"threads":[{"listen":..,"channels":[..]},..],
//    "totals":{"channels_open":..,"streams_open":..,"bytes_received":..,"bytes_sent":..,..}}

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "engine/control_server.hpp"
#include "engine/metrics.hpp"
#include "engine/metrics_http.hpp"
#include "engine/status_board.hpp"

namespace nbdtunnel::engine {

struct DestMonitorOptions {
  std::string control_socket;  // "" = none
  std::string metrics_listen;  // HOST:PORT or PORT (on 127.0.0.1); "" = none
};

class DestMonitor {
 public:
  explicit DestMonitor(DestMonitorOptions options);
  ~DestMonitor();
  DestMonitor(const DestMonitor&) = delete;
  DestMonitor& operator=(const DestMonitor&) = delete;

  // Creates the sockets and starts the thread (none if neither is asked for); false with error
  // filled if a socket cannot be made.
  bool start(std::string& error);

  // What the daemon's threads count into and describe themselves to.
  std::shared_ptr<Metrics> metrics() const { return metrics_; }
  std::shared_ptr<StatusBoard> board() const { return board_; }

  // The query-status answer (from any thread but the daemon's).
  nlohmann::json status() const;

 private:
  boost::asio::awaitable<nlohmann::json> handle(std::string command, nlohmann::json arguments);

  DestMonitorOptions options_;
  std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();
  std::shared_ptr<StatusBoard> board_ = std::make_shared<StatusBoard>();
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<MetricsHttpServer> http_;
  std::thread thread_;
};

}  // namespace nbdtunnel::engine
