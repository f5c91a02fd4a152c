#include "engine/dest_link.hpp"

#include <fmt/format.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>

#include "tunnel/socket_transport.hpp"
#include "tunnel/tls_handshake.hpp"

namespace nbdtunnel::engine {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using namespace std::chrono_literals;

DestLink::DestLink(asio::io_context& io, tunnel::Ring& ring, DestLinkOptions options,
                   std::function<void()> on_change)
    : io_(io), ring_(ring), o_(std::move(options)), on_change_(std::move(on_change)) {}

awaitable<void> DestLink::nap(std::chrono::milliseconds d) {
  asio::steady_timer timer(io_, d);
  co_await timer.async_wait(asio::as_tuple(use_awaitable));
}

awaitable<void> DestLink::connect() {
  using namespace asio::experimental::awaitable_operators;
  const std::string where = o_.dest.to_string();
  asio::ip::tcp::resolver resolver(io_);
  const std::string port = std::to_string(o_.dest.port);  // see "Coroutines under GCC 12"
  auto [rec, results] =
      co_await resolver.async_resolve(o_.dest.host, port, asio::as_tuple(use_awaitable));
  if (rec) {
    throw DestUnreachable(fmt::format("destination {}: cannot resolve: {}", where, rec.message()));
  }
  asio::ip::tcp::socket sock(io_);
  asio::steady_timer timer(io_, o_.connect_timeout);
  auto r = co_await (asio::async_connect(sock, results, asio::as_tuple(use_awaitable)) ||
                     timer.async_wait(asio::as_tuple(use_awaitable)));
  if (r.index() == 1) {
    throw DestUnreachable(fmt::format("destination {} unreachable: no answer within {} s", where,
                                      o_.connect_timeout.count() / 1000));
  }
  auto [cec, ep] = std::get<0>(r);
  if (cec) {
    throw DestUnreachable(fmt::format("destination {} unreachable: {}", where, cec.message()));
  }
  std::unique_ptr<tunnel::Transport> transport;
  tunnel::unique_fd connected(sock.release());
  if (o_.tls) {
    transport = co_await tls_handshake(std::move(connected));
  } else {
    transport = std::make_unique<tunnel::SocketTransport>(ring_, std::move(connected));
  }
  tunnel::ChannelEvents events;
  events.on_ready = [this](const tunnel::Hello&) {
    ready_ = true;
    if (on_change_) on_change_();
  };
  events.on_closed = [this](tunnel::Channel&, const std::string& reason) {
    closed_ = true;
    close_reason_ = reason;
    if (on_change_) on_change_();
  };
  channel_ = std::make_unique<tunnel::Channel>(io_, ring_, std::move(transport),
                                               tunnel::Channel::Role::initiator, where, o_.channel,
                                               std::move(events));
  channel_->start();
  const auto deadline = std::chrono::steady_clock::now() + o_.channel.handshake_timeout;
  while (!ready_ && !closed_ && std::chrono::steady_clock::now() < deadline) co_await nap(20ms);
  if (!ready_) {
    throw DestUnreachable(fmt::format("destination {} is not an nbdtunnel dest: {}", where,
                                      closed_ ? close_reason_ : "no HELLO reply"));
  }
}

// The TLS handshake on the connected socket: the transport, or DestUnreachable naming the cause.
awaitable<std::unique_ptr<tunnel::Transport>> DestLink::tls_handshake(tunnel::unique_fd fd) {
  std::optional<tunnel::Result<std::unique_ptr<tunnel::Transport>>> outcome;
  tunnel::TlsHandshake handshake(
      io_, ring_, std::move(fd), o_.tls, o_.tls_verify_host, o_.channel.handshake_timeout,
      [&outcome](tunnel::Result<std::unique_ptr<tunnel::Transport>> r) { outcome = std::move(r); });
  handshake.start();
  // Bounded by the handshake's own timeout.
  while (!outcome) co_await nap(10ms);
  if (!*outcome) {
    throw DestUnreachable(
        fmt::format("destination {}: TLS: {}", o_.dest.to_string(), outcome->error().message));
  }
  co_return std::move(**outcome);
}

awaitable<CallResult> DestLink::call(std::uint32_t procedure, std::vector<std::uint8_t> body,
                                     std::chrono::milliseconds timeout) {
  CallResult out;
  if (!channel_ || closed_) {
    out.error = "the channel is closed";
    co_return out;
  }
  auto result = std::make_shared<std::optional<CallResult>>();
  auto timer = std::make_shared<asio::steady_timer>(io_, timeout);
  channel_->call(procedure, body,
                 [result, timer](const tunnel::PacketHeader& h, std::span<const std::uint8_t> b) {
                   CallResult r;
                   r.ok = h.status == static_cast<std::uint32_t>(tunnel::PacketStatus::ok);
                   if (r.ok) {
                     r.body.assign(b.begin(), b.end());
                   } else {
                     tunnel::Result<tunnel::RemoteError> e = tunnel::decode_remote_error(b);
                     r.error = e ? e->message.value_or("no message") : e.error().message;
                   }
                   *result = std::move(r);
                   timer->cancel();
                 });
  co_await timer->async_wait(asio::as_tuple(use_awaitable));
  if (!*result) {
    out.error = closed_ ? "the channel closed: " + close_reason_
                        : fmt::format("no reply within {} s", timeout.count() / 1000);
    co_return out;
  }
  co_return std::move(**result);
}

void DestLink::close(const std::string& why) {
  if (channel_ && !channel_->closing()) channel_->close(why);
}

}  // namespace nbdtunnel::engine
