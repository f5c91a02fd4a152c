#pragma once
// The metrics endpoint of `nbdtunnel dest --metrics-listen`: a tiny HTTP/1.0 responder that
// answers GET /metrics with Prometheus text and closes the connection. Every client costs a
// bounded amount: at most kMaxClients at once (more are closed on accept), a head of at most
// kMaxHttpHead bytes (engine/http_request.hpp), and kRequestTimeout to send it.

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "tunnel/endpoint.hpp"

namespace nbdtunnel::engine {

class MetricsHttpServer {
 public:
  static constexpr std::size_t kMaxClients = 16;
  static constexpr std::chrono::seconds kRequestTimeout{5};

  // body: the Prometheus text, asked for each request (on the executor's thread).
  MetricsHttpServer(boost::asio::any_io_executor ex, tunnel::Endpoint listen,
                    std::function<std::string()> body);
  ~MetricsHttpServer();  // stop()
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds and starts accepting; false with error filled if the address cannot be used.
  bool start(std::string& error);
  // Closes the listener and every client. Idempotent; from the executor's thread.
  void stop();
  // The address bound (port 0 resolved), after start().
  const std::string& bound() const;

  struct State;

 private:
  std::shared_ptr<State> s_;
};

// The address for `--metrics-listen`: HOST:PORT as given, or a bare PORT on 127.0.0.1.
std::string metrics_listen_address(const std::string& text);

}  // namespace nbdtunnel::engine
