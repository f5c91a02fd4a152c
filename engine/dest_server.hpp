#pragma once
// `nbdtunnel dest`: accepts channels on TCP and splices each opened stream into a named target.

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "engine/admission.hpp"
#include "engine/dest_libvirt.hpp"
#include "engine/dest_migrations.hpp"
#include "engine/metrics.hpp"
#include "engine/status_board.hpp"
#include "tunnel/channel.hpp"
#include "tunnel/endpoint.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/tls_context.hpp"
#include "tunnel/tls_handshake.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::engine {

struct DestOptions {
  tunnel::Endpoint listen;
  std::map<std::string, std::string> targets;  // name → UNIX socket path
  std::string qmp_path;                        // destination QEMU's QMP socket, for PREPARE
  std::shared_ptr<DestRunDir> qmp_run_dir;     // NBD sockets and records (--qmp), all threads
  bool reuse_port = false;                     // several servers share the port (--threads)
  tunnel::ChannelConfig channel;               // its stream_budget is the daemon's stream limit
  std::shared_ptr<Admission> admission;        // the daemon's connection limits (all threads)
  std::shared_ptr<tunnel::TlsContext> tls;     // none: plain channels
  DestLibvirtOptions libvirt;                  // the libvirt role (`--libvirt`)
  std::shared_ptr<Metrics> metrics;            // the daemon's counters (all threads); none: own
  std::shared_ptr<StatusBoard> status;         // where this thread describes its channels
};

class DestServer {
 public:
  DestServer(boost::asio::io_context& io, tunnel::Ring& ring, DestOptions options);
  ~DestServer();
  // Binds and starts accepting; false with error filled if the port cannot be used.
  bool start(std::string& error);
  // Stops accepting and closes every channel; done runs once all I/O has finished.
  void stop(std::function<void()> done);
  // The address actually bound (port 0 resolved), valid after start().
  const std::string& bound() const { return bound_; }
  // This thread's channels, their streams and migrations, for `nbdtunnel status`
  // (engine/dest_report.cpp). On this server's thread.
  nlohmann::json describe() const;

 private:
  // One accepted connection: its channel and its place among the daemon's connections.
  struct Connection {
    std::unique_ptr<tunnel::Channel> channel;
    std::shared_ptr<Admission::Ticket> ticket;
    std::string peer;
    std::chrono::steady_clock::time_point since = std::chrono::steady_clock::now();
  };

  void on_accept(tunnel::Result<tunnel::unique_fd> accepted);
  void start_tls(tunnel::unique_fd client, const std::string& peer, Admission::Ticket ticket);
  void start_channel(std::unique_ptr<tunnel::Transport> transport, const std::string& peer,
                     Admission::Ticket ticket);
  // A connection refused for a limit: logged, but at most once a second in a flood.
  void note_refusal(const std::string& peer, const std::string& why);
  tunnel::Result<std::string> resolve_target(const tunnel::Channel& channel,
                                             const std::string& name) const;
  void maybe_stopped();
  void shorten_lost_channels_of(const std::string& host_id);

  // What is left of a lost channel's grace once its host has connected a new channel.
  static constexpr std::chrono::milliseconds kGraceAfterNewChannel{10'000};

  boost::asio::io_context& io_;
  tunnel::Ring& ring_;
  DestOptions options_;
  std::string bound_;
  std::unique_ptr<tunnel::Acceptor> acceptor_;
  std::map<tunnel::Channel*, Connection> channels_;
  std::map<tunnel::TlsHandshake*, std::unique_ptr<tunnel::TlsHandshake>> handshakes_;
  std::chrono::steady_clock::time_point last_refusal_log_{};
  std::size_t refusals_unlogged_ = 0;
  DestMigrations migrations_;
  DestLibvirt libvirt_;
  std::function<void()> on_stopped_;
  bool stopping_ = false;
};

}  // namespace nbdtunnel::engine
