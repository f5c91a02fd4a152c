#pragma once
// `nbdtunnel source`: listens on local UNIX sockets and carries each accepted connection as a
// stream over one channel to the destination, reconnecting with backoff when the channel drops.
// A resumable channel whose connection is lost keeps its streams: each new connection first
// tries to resume it, until the destination's grace period ends.

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tunnel/channel.hpp"
#include "tunnel/endpoint.hpp"
#include "tunnel/resume_exchange.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/tls_context.hpp"
#include "tunnel/tls_handshake.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::engine {

struct Forward {
  std::string path;    // local UNIX socket we listen on
  std::string target;  // destination target name
};

struct SourceOptions {
  tunnel::Endpoint connect;
  std::vector<Forward> forwards;
  mode_t socket_mode = 0600;
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds max_backoff{5'000};
  tunnel::ChannelConfig channel;
  std::shared_ptr<tunnel::TlsContext> tls;  // none: a plain channel
  std::string tls_verify_host;              // the name the server certificate must carry
};

class SourceForwarder {
 public:
  SourceForwarder(boost::asio::io_context& io, tunnel::Ring& ring, SourceOptions options);
  ~SourceForwarder();
  // Creates every forward socket and starts connecting. False with error filled (and nothing
  // left behind) if a socket cannot be created.
  bool start(std::string& error);
  // Closes the channel and the sockets; done runs once all I/O has finished.
  void stop(std::function<void()> done);

 private:
  void connect();
  void try_address(std::size_t index);
  void on_connect(int res);
  void start_channel(std::unique_ptr<tunnel::Transport> transport);
  // The channel is detached: offer it the new connection.
  void resume_channel(std::unique_ptr<tunnel::Transport> transport);
  void on_resume_attempt(tunnel::Result<tunnel::ResumeExchange::Resumed> r);
  void on_channel_closed(const std::string& reason);
  void schedule_reconnect();
  void on_accept(const Forward& f, tunnel::Result<tunnel::unique_fd> accepted);
  void maybe_stopped();

  boost::asio::io_context& io_;
  tunnel::Ring& ring_;
  SourceOptions options_;
  std::vector<std::unique_ptr<tunnel::Acceptor>> acceptors_;
  std::vector<std::string> created_paths_;

  std::unique_ptr<tunnel::TlsHandshake> handshake_;
  std::unique_ptr<tunnel::ResumeExchange> resuming_;
  std::unique_ptr<tunnel::Channel> channel_;
  bool was_ready_ = false;
  std::vector<tunnel::ResolvedAddress> addresses_;
  std::size_t address_index_ = 0;
  tunnel::unique_fd connecting_;
  tunnel::Op connect_op_;
  boost::asio::steady_timer connect_timer_;
  boost::asio::steady_timer backoff_timer_;
  std::chrono::milliseconds backoff_{100};
  // Connecting refused without a break: a detached channel gives up after kRefusedGiveUp of
  // that (nothing listens, the daemon that held it is gone).
  tunnel::RefusedStreak refusals_;
  std::string last_error_;

  bool stopping_ = false;
  std::function<void()> on_stopped_;
};

}  // namespace nbdtunnel::engine
