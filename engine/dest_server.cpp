#include "engine/dest_server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "tunnel/socket_transport.hpp"

namespace nbdtunnel::engine {

DestServer::DestServer(boost::asio::io_context& io, tunnel::Ring& ring, DestOptions options)
    : io_(io),
      ring_(ring),
      options_(std::move(options)),
      migrations_(io, options_.qmp_path, options_.run_dir) {}

bool DestServer::start(std::string& error) {
  tunnel::Result<tunnel::unique_fd> fd = tunnel::listen_tcp(options_.listen, options_.reuse_port);
  if (!fd) {
    error = fd.error().message;
    return false;
  }
  bound_ = tunnel::local_endpoint(fd->get());
  acceptor_ = std::make_unique<tunnel::Acceptor>(
      ring_, std::move(*fd),
      [this](tunnel::Result<tunnel::unique_fd> c) { on_accept(std::move(c)); });
  acceptor_->start();
  spdlog::info("listening on {}", bound_);
  for (const auto& [name, path] : options_.targets) {
    spdlog::info("target '{}' is {}", name, path);
  }
  if (!options_.qmp_path.empty()) {
    spdlog::info("preparing migrations through QMP {}", options_.qmp_path);
  }
  return true;
}

tunnel::Result<std::string> DestServer::resolve_target(const std::string& name) const {
  if (auto prepared = migrations_.resolve(name)) return *prepared;
  auto it = options_.targets.find(name);
  if (it == options_.targets.end()) {
    std::string known;
    for (const auto& [n, p] : options_.targets) known += (known.empty() ? "" : ", ") + n;
    return tunnel::input_error(fmt::format("unknown target '{}' (this destination serves: {})",
                                           name, known.empty() ? "none" : known));
  }
  return it->second;
}

void DestServer::on_accept(tunnel::Result<tunnel::unique_fd> accepted) {
  if (!accepted) {
    spdlog::warn("accept on {} failed: {}", bound_, accepted.error().code.message());
    return;
  }
  tunnel::unique_fd client = std::move(*accepted);
  const std::string peer = tunnel::peer_endpoint(client.get());
  spdlog::info("channel from {} accepted", peer);
  tunnel::ChannelEvents events;
  events.resolve_target = [this](const std::string& name) { return resolve_target(name); };
  events.on_closed = [this, peer](tunnel::Channel& ch, const std::string& reason) {
    spdlog::info("channel from {} closed: {}", peer, reason);
    migrations_.channel_closed(ch);
    channels_.erase(&ch);  // on_closed runs from a posted handler: destroying the channel is safe
    maybe_stopped();
  };
  events.on_call = [this](tunnel::Channel& ch, const tunnel::PacketHeader& call,
                          std::span<const std::uint8_t> body) {
    migrations_.on_call(ch, call, body);
  };
  auto channel = std::make_unique<tunnel::Channel>(
      io_, ring_, std::make_unique<tunnel::SocketTransport>(ring_, std::move(client)),
      tunnel::Channel::Role::responder, peer, options_.channel, std::move(events));
  tunnel::Channel* raw = channel.get();
  channels_.emplace(raw, std::move(channel));
  raw->start();
}

void DestServer::stop(std::function<void()> done) {
  on_stopped_ = std::move(done);
  if (acceptor_) acceptor_->stop();
  std::vector<tunnel::Channel*> open;
  for (auto& [raw, ch] : channels_) open.push_back(raw);
  for (auto* ch : open) ch->close("destination is shutting down");
  maybe_stopped();
}

void DestServer::maybe_stopped() {
  if (!on_stopped_ || !channels_.empty()) return;
  // Channels are gone; remove whatever migrations they left prepared, then report.
  auto done = std::move(on_stopped_);
  on_stopped_ = nullptr;
  migrations_.shutdown(std::move(done));
}

}  // namespace nbdtunnel::engine
