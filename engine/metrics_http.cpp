#include "engine/metrics_http.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <set>

#include "engine/http_request.hpp"

namespace nbdtunnel::engine {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct MetricsHttpServer::State {
  State(asio::any_io_executor e, tunnel::Endpoint l, std::function<std::string()> b)
      : ex(std::move(e)), listen(std::move(l)), body(std::move(b)), acceptor(ex) {}
  asio::any_io_executor ex;
  tunnel::Endpoint listen;
  std::function<std::string()> body;
  tcp::acceptor acceptor;
  std::string bound;
  std::set<std::shared_ptr<tcp::socket>> clients;
  bool stopped = false;
};

namespace {

using State = MetricsHttpServer::State;

std::string response(int code, const std::string& content_type, const std::string& body,
                     bool with_body) {
  std::string out = fmt::format(
      "HTTP/1.0 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", code,
      http_reason(code), content_type, body.size());
  if (with_body) out += body;
  return out;
}

// Reads one request head (bounded in size and time), answers it, closes.
asio::awaitable<void> serve(std::shared_ptr<State> s, std::shared_ptr<tcp::socket> socket) {
  asio::steady_timer deadline(s->ex, MetricsHttpServer::kRequestTimeout);
  deadline.async_wait([socket](const boost::system::error_code& ec) {
    if (ec) return;
    boost::system::error_code ignored;
    socket->close(ignored);  // the read in progress fails; the client gets nothing
  });
  std::string head;
  char buf[1024];
  HttpRequest request;
  while (request.status == HttpRequest::Status::need_more && head.size() < kMaxHttpHead) {
    const std::size_t room = std::min(sizeof buf, kMaxHttpHead - head.size());
    auto [ec, n] = co_await socket->async_read_some(asio::buffer(buf, room),
                                                    asio::as_tuple(asio::use_awaitable));
    if (ec) break;
    head.append(buf, n);
    request = parse_http_request(head);
  }
  std::string reply;
  if (request.status == HttpRequest::Status::ok) {
    reply = response(200, "text/plain; version=0.0.4; charset=utf-8", s->body(), !request.head);
  } else if (request.status == HttpRequest::Status::bad) {
    reply = response(request.code, "text/plain; charset=utf-8", request.reason + "\n", true);
  } else if (head.size() >= kMaxHttpHead) {
    reply = response(431, "text/plain; charset=utf-8", "the request head is too large\n", true);
  }
  if (!reply.empty() && socket->is_open()) {
    co_await asio::async_write(*socket, asio::buffer(reply), asio::as_tuple(asio::use_awaitable));
  }
  deadline.cancel();
  boost::system::error_code ignored;
  socket->shutdown(tcp::socket::shutdown_both, ignored);
  socket->close(ignored);
  s->clients.erase(socket);
}

asio::awaitable<void> accept_loop(std::shared_ptr<State> s) {
  while (!s->stopped) {
    auto [ec, socket] = co_await s->acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
    if (s->stopped) break;
    if (ec) {
      spdlog::warn("metrics on {}: accept failed: {}", s->bound, ec.message());
      asio::steady_timer backoff(s->ex, std::chrono::milliseconds(100));
      co_await backoff.async_wait(asio::as_tuple(asio::use_awaitable));
      continue;
    }
    if (s->clients.size() >= MetricsHttpServer::kMaxClients) continue;  // closes it
    auto client = std::make_shared<tcp::socket>(std::move(socket));
    s->clients.insert(client);
    asio::co_spawn(s->ex, serve(s, client), asio::detached);
  }
}

}  // namespace

MetricsHttpServer::MetricsHttpServer(asio::any_io_executor ex, tunnel::Endpoint listen,
                                     std::function<std::string()> body)
    : s_(std::make_shared<State>(std::move(ex), std::move(listen), std::move(body))) {}

MetricsHttpServer::~MetricsHttpServer() {
  stop();
}

bool MetricsHttpServer::start(std::string& error) {
  tunnel::Result<tunnel::unique_fd> fd = tunnel::listen_tcp(s_->listen);
  if (!fd) {
    error = "--metrics-listen: " + fd.error().message;
    return false;
  }
  s_->bound = tunnel::local_endpoint(fd->get());
  const bool v6 = s_->bound.front() == '[';
  boost::system::error_code ec;
  s_->acceptor.assign(v6 ? tcp::v6() : tcp::v4(), fd->get(), ec);
  if (ec) {
    error = fmt::format("--metrics-listen {}: {}", s_->bound, ec.message());
    return false;
  }
  fd->release();
  asio::co_spawn(s_->ex, accept_loop(s_), asio::detached);
  return true;
}

void MetricsHttpServer::stop() {
  if (s_->stopped) return;
  s_->stopped = true;
  boost::system::error_code ignored;
  s_->acceptor.close(ignored);
  for (const auto& c : s_->clients) c->close(ignored);
  s_->clients.clear();
}

const std::string& MetricsHttpServer::bound() const {
  return s_->bound;
}

std::string metrics_listen_address(const std::string& text) {
  if (!text.empty() &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return "127.0.0.1:" + text;
  }
  return text;
}

}  // namespace nbdtunnel::engine
