#include "engine/dest_server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "tunnel/socket_transport.hpp"

namespace nbdtunnel::engine {

DestServer::DestServer(boost::asio::io_context& io, tunnel::Ring& ring, DestOptions options)
    : io_(io),
      ring_(ring),
      options_(std::move(options)),
      migrations_(io, options_.qmp_path, options_.qmp_run_dir),
      libvirt_(options_.libvirt) {
  if (!options_.admission) options_.admission = std::make_shared<Admission>(AdmissionLimits{});
  if (!options_.metrics) options_.metrics = std::make_shared<Metrics>();
  options_.channel.counters = options_.metrics->traffic();
}

DestServer::~DestServer() {
  if (options_.status) options_.status->detach(this);
}

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
  if (options_.status)
    options_.status->attach(this, io_.get_executor(), [this] { return describe(); });
  for (const auto& [name, path] : options_.targets) {
    spdlog::info("target '{}' is {}", name, path);
  }
  if (!options_.qmp_path.empty()) {
    spdlog::info("preparing migrations through QMP {}, run directory {}", options_.qmp_path,
                 options_.qmp_run_dir ? options_.qmp_run_dir->path() : "(none)");
  }
  if (options_.libvirt.enabled) {
    spdlog::info("libvirt role: libvirt at {}, run directories in {}",
                 options_.libvirt.libvirt_socket, options_.libvirt.run_dir);
  }
  return true;
}

tunnel::Result<std::string> DestServer::resolve_target(const tunnel::Channel& channel,
                                                       const std::string& name) const {
  if (auto prepared = migrations_.resolve(channel, name)) return *prepared;
  if (auto prepared = libvirt_.resolve(channel, name)) return *prepared;
  auto it = options_.targets.find(name);
  // Which targets exist is not for a peer that asks for a wrong one to learn.
  if (it == options_.targets.end())
    return tunnel::input_error(fmt::format("unknown target '{}'", name));
  return it->second;
}

void DestServer::on_accept(tunnel::Result<tunnel::unique_fd> accepted) {
  if (!accepted) {
    spdlog::warn("accept on {} failed: {}", bound_, accepted.error().code.message());
    return;
  }
  tunnel::unique_fd client = std::move(*accepted);
  const std::string peer = tunnel::peer_endpoint(client.get());
  RefusalLimit limit{};
  tunnel::Result<Admission::Ticket> ticket =
      options_.admission->admit(tunnel::peer_host(client.get()), &limit);
  if (!ticket) {
    options_.metrics->refused(limit);
    note_refusal(peer, ticket.error().message);
    return;  // the connection closes with client
  }
  options_.metrics->connection_accepted();
  if (options_.tls) {
    start_tls(std::move(client), peer, std::move(*ticket));
    return;
  }
  spdlog::info("channel from {} accepted", peer);
  start_channel(std::make_unique<tunnel::SocketTransport>(ring_, std::move(client)), peer,
                std::move(*ticket));
}

// Nothing but the handshake is served until it completes: the channel (and its buffers) exists
// only for a peer whose certificate passed.
void DestServer::start_tls(tunnel::unique_fd client, const std::string& peer,
                           Admission::Ticket ticket) {
  auto place = std::make_shared<Admission::Ticket>(std::move(ticket));
  auto self = std::make_shared<tunnel::TlsHandshake*>(nullptr);
  auto done = [this, self, place, peer](tunnel::Result<std::unique_ptr<tunnel::Transport>> r) {
    // Called from a posted handler with no operation of the handshake left: it may go now.
    auto it = handshakes_.find(*self);
    const std::string dn = it != handshakes_.end() ? it->second->peer_dn() : std::string();
    handshakes_.erase(*self);
    if (!r) {
      if (r.error().code != std::errc::operation_canceled) {
        options_.metrics->handshake_failed(classify_tls_failure(r.error().code));
        note_refusal(peer, "TLS handshake failed: " + r.error().message);
      }
      maybe_stopped();
      return;
    }
    if (stopping_) {
      maybe_stopped();
      return;
    }
    spdlog::info("channel from {} accepted: TLS client certificate '{}'", peer, dn);
    place->authenticated();
    start_channel(std::move(*r), peer, std::move(*place));
  };
  auto handshake =
      std::make_unique<tunnel::TlsHandshake>(io_, ring_, std::move(client), options_.tls, "",
                                             options_.channel.handshake_timeout, std::move(done));
  *self = handshake.get();
  handshakes_.emplace(handshake.get(), std::move(handshake));
  (*self)->start();
}

void DestServer::note_refusal(const std::string& peer, const std::string& why) {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_refusal_log_ < std::chrono::seconds(1)) {
    ++refusals_unlogged_;
    return;
  }
  if (refusals_unlogged_ > 0) {
    spdlog::warn("refusing connection from {}: {} ({} more refused since the last message)", peer,
                 why, refusals_unlogged_);
  } else {
    spdlog::warn("refusing connection from {}: {}", peer, why);
  }
  last_refusal_log_ = now;
  refusals_unlogged_ = 0;
}

void DestServer::start_channel(std::unique_ptr<tunnel::Transport> transport,
                               const std::string& peer, Admission::Ticket ticket) {
  auto place = std::make_shared<Admission::Ticket>(std::move(ticket));
  tunnel::ChannelEvents events;
  events.resolve_target = [this](const tunnel::Channel& ch, const std::string& name) {
    return resolve_target(ch, name);
  };
  events.on_ready = [this, place, m = options_.metrics](const tunnel::Hello& hello) {
    place->authenticated();
    m->channel_opened();
    shorten_lost_channels_of(hello.host_id);
  };
  events.on_closed = [this, peer](tunnel::Channel& ch, const std::string& reason) {
    options_.metrics->channel_ended(ch.hello_done(), reason);
    spdlog::info("channel from {} closed: {}", peer, reason);
    migrations_.channel_closed(ch);
    libvirt_.channel_closed(ch);
    channels_.erase(&ch);  // on_closed runs from a posted handler: destroying the channel is safe
    maybe_stopped();
  };
  events.on_lost = [this, peer](tunnel::Channel&, const std::string& reason) {
    options_.metrics->channel_lost();
    spdlog::warn("channel from {}: connection lost ({}); keeping its streams for {} s", peer,
                 reason, options_.channel.resume_timeout.count() / 1000.0);
  };
  events.on_resumed = [this, peer](tunnel::Channel&, std::chrono::steady_clock::duration outage) {
    options_.metrics->channel_resumed();
    spdlog::info("channel from {} resumed after {:.1f} s", peer,
                 std::chrono::duration<double>(outage).count());
  };
  // Only this thread's channels: a RESUME that lands on another thread (--threads) is refused.
  events.find_resumable = [this](const tunnel::ResumeRequest& request) -> tunnel::Channel* {
    for (auto& [raw, connection] : channels_) {
      if (raw->resumable() && raw->resume_id() == request.id) return raw;
    }
    return nullptr;
  };
  events.on_call = [this](tunnel::Channel& ch, const tunnel::PacketHeader& call,
                          std::span<const std::uint8_t> body) {
    if (DestLibvirt::serves(call.procedure)) {
      libvirt_.on_call(ch, call, body);
    } else {
      migrations_.on_call(ch, call, body);
    }
  };
  auto channel = std::make_unique<tunnel::Channel>(io_, ring_, std::move(transport),
                                                   tunnel::Channel::Role::responder, peer,
                                                   options_.channel, std::move(events));
  tunnel::Channel* raw = channel.get();
  channels_.emplace(raw, Connection{std::move(channel), std::move(place), peer});
  raw->start();
}

// A new channel from a host whose older channel waits to be resumed shows that the network
// between them works: the older one's initiator, which retries every few seconds, is then most
// likely gone (killed), and what its channel holds (exports, a half-made libvirt domain) would
// block the new one for the whole grace period.
void DestServer::shorten_lost_channels_of(const std::string& host_id) {
  for (auto& [raw, connection] : channels_) {
    if (raw->detached() && raw->peer_hello().host_id == host_id) {
      raw->shorten_grace(kGraceAfterNewChannel,
                         "a new channel from the same host connected meanwhile");
    }
  }
}

void DestServer::stop(std::function<void()> done) {
  stopping_ = true;
  on_stopped_ = std::move(done);
  std::vector<tunnel::TlsHandshake*> shaking;
  for (auto& [raw, handshake] : handshakes_) shaking.push_back(raw);
  for (auto* h : shaking) h->cancel();
  if (acceptor_) acceptor_->stop();
  std::vector<tunnel::Channel*> open;
  for (auto& [raw, connection] : channels_) open.push_back(raw);
  for (auto* ch : open) ch->close("destination is shutting down");
  maybe_stopped();
}

void DestServer::maybe_stopped() {
  if (!on_stopped_ || !channels_.empty() || !handshakes_.empty()) return;
  // Channels are gone; remove whatever migrations they left prepared, then report.
  auto done = std::move(on_stopped_);
  on_stopped_ = nullptr;
  libvirt_.shutdown();
  migrations_.shutdown(std::move(done));
}

}  // namespace nbdtunnel::engine
