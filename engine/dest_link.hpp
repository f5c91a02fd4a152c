#pragma once
// The engine's channel to `nbdtunnel dest`: TCP connect (bounded), the TLS handshake when
// configured, HELLO, and calls of the engine's procedures with a timeout. Both migration engines
// (QMP and libvirt) drive their destination through it. When the channel's connection is lost it
// dials again (and again, with backoff) and resumes the channel until the destination's grace
// period ends. Runs on one io_context thread.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tunnel/channel.hpp"
#include "tunnel/endpoint.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/tls_context.hpp"

namespace nbdtunnel::engine {

struct DestLinkOptions {
  tunnel::Endpoint dest;
  std::chrono::milliseconds connect_timeout{10'000};
  tunnel::ChannelConfig channel;
  std::shared_ptr<tunnel::TlsContext> tls;  // none: a plain channel
  std::string tls_verify_host;              // the name the server certificate must carry
};

// Why the destination could not be reached; the message names it and the cause.
struct DestUnreachable : std::runtime_error {
  explicit DestUnreachable(const std::string& what, bool was_refused = false)
      : std::runtime_error(what), refused(was_refused) {}
  bool refused;  // the host answered that nothing listens on the port
};

// What the owner hears of a lost connection (on the io thread).
struct DestLinkEvents {
  std::function<void()> on_change;  // the channel became ready or closed
  std::function<void(const std::string& reason)> on_lost;
  std::function<void(double outage_s)> on_resumed;
};

struct CallResult {
  bool ok = false;
  std::vector<std::uint8_t> body;
  std::string error;
};

class DestLink {
 public:
  DestLink(boost::asio::io_context& io, tunnel::Ring& ring, DestLinkOptions options,
           DestLinkEvents events);
  DestLink(const DestLink&) = delete;
  DestLink& operator=(const DestLink&) = delete;

  // Connects, authenticates and exchanges HELLO; throws DestUnreachable.
  boost::asio::awaitable<void> connect();
  // One call of an engine procedure; never throws: a closed channel or a timeout is an error.
  boost::asio::awaitable<CallResult> call(std::uint32_t procedure, std::vector<std::uint8_t> body,
                                          std::chrono::milliseconds timeout);

  tunnel::Channel* channel() { return channel_.get(); }
  bool ready() const { return ready_ && !closed_; }
  bool closed() const { return closed_; }
  const std::string& close_reason() const { return close_reason_; }
  // Closes the channel if open; done() says when its I/O has finished.
  void close(const std::string& why);
  bool done() const { return (!channel_ || closed_) && !reconnecting_; }
  const DestLinkOptions& options() const { return o_; }

 private:
  // TCP connect (within `timeout`) and the TLS handshake: a transport, or DestUnreachable.
  boost::asio::awaitable<std::unique_ptr<tunnel::Transport>> dial(
      std::chrono::milliseconds timeout);
  boost::asio::awaitable<std::unique_ptr<tunnel::Transport>> tls_handshake(tunnel::unique_fd fd);
  boost::asio::awaitable<void> nap(std::chrono::milliseconds d);
  // Dials and resumes the detached channel until it is back or closed.
  boost::asio::awaitable<void> reconnect();

  boost::asio::io_context& io_;
  tunnel::Ring& ring_;
  DestLinkOptions o_;
  DestLinkEvents events_;
  std::unique_ptr<tunnel::Channel> channel_;
  bool ready_ = false;
  bool closed_ = false;
  bool reconnecting_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for reconnect()
  std::string close_reason_;
};

}  // namespace nbdtunnel::engine
