#include "engine/dest_monitor.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/post.hpp>

#ifndef NBDTUNNEL_VERSION
#define NBDTUNNEL_VERSION "unknown"
#endif

namespace nbdtunnel::engine {

using nlohmann::json;
namespace asio = boost::asio;

// How long a report waits for a daemon thread to describe its channels.
constexpr std::chrono::milliseconds kDescribeTimeout{1000};

DestMonitor::DestMonitor(DestMonitorOptions options)
    : options_(std::move(options)), work_(asio::make_work_guard(io_)) {}

DestMonitor::~DestMonitor() {
  if (thread_.joinable()) {
    asio::post(io_, [this] {
      if (control_) control_->stop();
      if (http_) http_->stop();
      io_.stop();
    });
    thread_.join();
  }
}

bool DestMonitor::start(std::string& error) {
  if (options_.control_socket.empty() && options_.metrics_listen.empty()) return true;
  if (!options_.control_socket.empty()) {
    control_ =
        std::make_unique<ControlServer>(io_.get_executor(), options_.control_socket,
                                        [this](const std::string& command, const json& arguments) {
                                          return handle(command, arguments);
                                        });
    try {
      control_->start();
    } catch (const std::exception& e) {
      error = e.what();
      return false;
    }
    spdlog::info("control socket {} (nbdtunnel status --control-socket {})",
                 options_.control_socket, options_.control_socket);
  }
  if (!options_.metrics_listen.empty()) {
    auto ep = tunnel::parse_endpoint(metrics_listen_address(options_.metrics_listen));
    if (!ep) {
      error = "--metrics-listen: " + ep.error().message;
      return false;
    }
    http_ = std::make_unique<MetricsHttpServer>(io_.get_executor(), *ep,
                                                [this] { return metrics_->prometheus(); });
    if (!http_->start(error)) return false;
    if (!tunnel::is_loopback(ep->host)) {
      spdlog::warn("metrics on {} are served to anyone who can reach it, without authentication",
                   http_->bound());
    }
    spdlog::info("metrics on http://{}/metrics", http_->bound());
  }
  thread_ = std::thread([this] { io_.run(); });
  return true;
}

json DestMonitor::status() const {
  using T = tunnel::TrafficCounters;
  const T& t = *metrics_->traffic();
  const std::uint64_t opened = T::get(t.streams_opened), closed = T::get(t.streams_closed);
  json totals = {
      {"channels_open", metrics_->channels_open()},
      {"channels_total", metrics_->channels_total()},
      {"streams_open", opened > closed ? opened - closed : 0},
      {"streams_total", opened},
      {"bytes_received", T::get(t.bytes_received)},
      {"bytes_sent", T::get(t.bytes_sent)},
      {"credit_stalls", T::get(t.credit_stalls)},
  };
  json failures = json::object();
  for (std::size_t i = 0; i < kHandshakeFailures; ++i) {
    const auto cause = static_cast<HandshakeFailure>(i);
    failures[to_string(cause)] = metrics_->handshake_failures(cause);
  }
  json refusals = json::object();
  for (std::size_t i = 0; i < kRefusalLimits; ++i) {
    const auto limit = static_cast<RefusalLimit>(i);
    refusals[to_string(limit)] = metrics_->refusals(limit);
  }
  totals["handshake_failures"] = std::move(failures);
  totals["refusals"] = std::move(refusals);
  const double uptime =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  return {{"version", NBDTUNNEL_VERSION},
          {"pid", static_cast<long>(::getpid())},
          {"uptime", uptime},
          {"threads", board_->collect(kDescribeTimeout)},
          {"totals", std::move(totals)}};
}

asio::awaitable<json> DestMonitor::handle(std::string command, json arguments) {
  (void)arguments;
  if (command == "query-status") co_return status();
  throw ControlError("CommandNotFound",
                     "unknown command '" + command + "' (this socket serves query-status)");
}

}  // namespace nbdtunnel::engine
