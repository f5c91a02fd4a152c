#include "engine/dest_link.hpp"

#include <fmt/format.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>

#include "tunnel/resume_exchange.hpp"
#include "tunnel/socket_transport.hpp"
#include "tunnel/tls_handshake.hpp"

namespace nbdtunnel::engine {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using namespace std::chrono_literals;

DestLink::DestLink(asio::io_context& io, tunnel::Ring& ring, DestLinkOptions options,
                   DestLinkEvents events)
    : io_(io), ring_(ring), o_(std::move(options)), events_(std::move(events)) {}

awaitable<void> DestLink::nap(std::chrono::milliseconds d) {
  asio::steady_timer timer(io_, d);
  co_await timer.async_wait(asio::as_tuple(use_awaitable));
}

awaitable<std::unique_ptr<tunnel::Transport>> DestLink::dial(std::chrono::milliseconds timeout) {
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
  asio::steady_timer timer(io_, timeout);
  auto r = co_await (asio::async_connect(sock, results, asio::as_tuple(use_awaitable)) ||
                     timer.async_wait(asio::as_tuple(use_awaitable)));
  if (r.index() == 1) {
    throw DestUnreachable(fmt::format("destination {} unreachable: no answer within {} s", where,
                                      timeout.count() / 1000.0));
  }
  auto [cec, ep] = std::get<0>(r);
  if (cec) {
    throw DestUnreachable(fmt::format("destination {} unreachable: {}", where, cec.message()),
                          cec == asio::error::connection_refused);
  }
  tunnel::unique_fd connected(sock.release());
  if (o_.tls) co_return co_await tls_handshake(std::move(connected));
  co_return std::make_unique<tunnel::SocketTransport>(ring_, std::move(connected));
}

awaitable<void> DestLink::connect() {
  const std::string where = o_.dest.to_string();
  std::unique_ptr<tunnel::Transport> transport = co_await dial(o_.connect_timeout);
  tunnel::ChannelEvents events;
  events.on_ready = [this](const tunnel::Hello&) {
    ready_ = true;
    if (events_.on_change) events_.on_change();
  };
  events.on_closed = [this](tunnel::Channel&, const std::string& reason) {
    closed_ = true;
    close_reason_ = reason;
    if (events_.on_change) events_.on_change();
  };
  events.on_lost = [this](tunnel::Channel&, const std::string& reason) {
    if (events_.on_lost) events_.on_lost(reason);
    if (!reconnecting_) asio::co_spawn(io_, reconnect(), asio::detached);
  };
  events.on_resumed = [this](tunnel::Channel&, std::chrono::steady_clock::duration outage) {
    if (events_.on_resumed) events_.on_resumed(std::chrono::duration<double>(outage).count());
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

// Each attempt: dial (a short timeout: a live destination answers at once), then RESUME. A
// refusal ends the channel; anything else is tried again until the grace period is over, when
// the channel closes itself.
awaitable<void> DestLink::reconnect() {
  // The owner waits for done() before it destroys this link, but only so long: every step
  // checks first that the link is still there.
  const std::weak_ptr<bool> alive = alive_;
  reconnecting_ = true;
  std::chrono::milliseconds backoff = 100ms;
  tunnel::RefusedStreak refusals;
  while (!alive.expired() && channel_ && channel_->detached() && !closed_) {
    std::string failure;
    bool refused = false;
    try {
      std::unique_ptr<tunnel::Transport> transport =
          co_await dial(std::min<std::chrono::milliseconds>(o_.connect_timeout, 2s));
      if (alive.expired() || closed_ || !channel_->detached()) break;
      std::optional<tunnel::Result<tunnel::ResumeExchange::Resumed>> outcome;
      tunnel::ResumeExchange exchange(
          io_, ring_, std::move(transport), channel_->resume_request(),
          o_.channel.handshake_timeout,
          [&outcome](tunnel::Result<tunnel::ResumeExchange::Resumed> r) {
            outcome = std::move(r);
          });
      exchange.start();
      while (!outcome) co_await nap(10ms);  // bounded by the exchange's own timeout
      if (alive.expired() || closed_) break;
      if (*outcome) {
        channel_->resume(std::move((*outcome)->transport), (*outcome)->peer_received);
        break;
      }
      if (outcome->error().code == std::errc::permission_denied) {
        channel_->close(tunnel::resume_refused_reason(outcome->error().message));
        break;
      }
      failure = outcome->error().message;
    } catch (const DestUnreachable& e) {
      failure = e.what();
      refused = e.refused;
    }
    if (alive.expired()) co_return;
    if (refusals.too_long(refused)) {
      if (channel_ && !closed_) channel_->close(tunnel::daemon_gone_reason(failure));
      break;
    }
    if (channel_ && !closed_) channel_->note_resume_failure(failure);
    co_await nap(backoff);
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, 1s);
  }
  if (alive.expired()) co_return;
  reconnecting_ = false;
  if (events_.on_change) events_.on_change();
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
