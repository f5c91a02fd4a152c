#pragma once
// `nbdtunnel dest`: accepts channels on TCP and splices each opened stream into a named target.

#include <boost/asio/io_context.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "engine/dest_migrations.hpp"
#include "tunnel/channel.hpp"
#include "tunnel/endpoint.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::engine {

struct DestOptions {
  tunnel::Endpoint listen;
  std::map<std::string, std::string> targets;  // name → UNIX socket path
  std::string qmp_path;                        // destination QEMU's QMP socket, for PREPARE
  std::string run_dir;                         // private directory for prepared NBD sockets
  bool reuse_port = false;                     // several servers share the port (--threads)
  tunnel::ChannelConfig channel;
};

class DestServer {
 public:
  DestServer(boost::asio::io_context& io, tunnel::Ring& ring, DestOptions options);
  // Binds and starts accepting; false with error filled if the port cannot be used.
  bool start(std::string& error);
  // Stops accepting and closes every channel; done runs once all I/O has finished.
  void stop(std::function<void()> done);
  // The address actually bound (port 0 resolved), valid after start().
  const std::string& bound() const { return bound_; }

 private:
  void on_accept(tunnel::Result<tunnel::unique_fd> accepted);
  tunnel::Result<std::string> resolve_target(const std::string& name) const;
  void maybe_stopped();

  boost::asio::io_context& io_;
  tunnel::Ring& ring_;
  DestOptions options_;
  std::string bound_;
  std::unique_ptr<tunnel::Acceptor> acceptor_;
  std::map<tunnel::Channel*, std::unique_ptr<tunnel::Channel>> channels_;
  DestMigrations migrations_;
  std::function<void()> on_stopped_;
};

}  // namespace nbdtunnel::engine
