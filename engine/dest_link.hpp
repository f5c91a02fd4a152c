#pragma once
// The engine's channel to `nbdtunnel dest`: TCP connect (bounded), the TLS handshake when
// configured, HELLO, and calls of the engine's procedures with a timeout. Both migration engines
// (QMP and libvirt) drive their destination through it. Runs on one io_context thread.

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
  using std::runtime_error::runtime_error;
};

struct CallResult {
  bool ok = false;
  std::vector<std::uint8_t> body;
  std::string error;
};

class DestLink {
 public:
  // on_change runs (on the io thread) when the channel becomes ready or closes.
  DestLink(boost::asio::io_context& io, tunnel::Ring& ring, DestLinkOptions options,
           std::function<void()> on_change);
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
  bool done() const { return !channel_ || closed_; }
  const DestLinkOptions& options() const { return o_; }

 private:
  boost::asio::awaitable<std::unique_ptr<tunnel::Transport>> tls_handshake(tunnel::unique_fd fd);
  boost::asio::awaitable<void> nap(std::chrono::milliseconds d);

  boost::asio::io_context& io_;
  tunnel::Ring& ring_;
  DestLinkOptions o_;
  std::function<void()> on_change_;
  std::unique_ptr<tunnel::Channel> channel_;
  bool ready_ = false;
  bool closed_ = false;
  std::string close_reason_;
};

}  // namespace nbdtunnel::engine
