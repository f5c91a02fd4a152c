#include "engine/source_forwarder.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "tunnel/socket_transport.hpp"

namespace nbdtunnel::engine {

SourceForwarder::SourceForwarder(boost::asio::io_context& io, tunnel::Ring& ring,
                                 SourceOptions options)
    : io_(io), ring_(ring), options_(std::move(options)), connect_timer_(io), backoff_timer_(io) {
  connect_op_.set_handler([this](int res, std::uint32_t) { on_connect(res); });
}

SourceForwarder::~SourceForwarder() {
  for (const std::string& p : created_paths_) ::unlink(p.c_str());
}

bool SourceForwarder::start(std::string& error) {
  for (const Forward& f : options_.forwards) {
    tunnel::Result<tunnel::unique_fd> fd = tunnel::listen_unix(f.path, options_.socket_mode);
    if (!fd) {
      error = fd.error().message;
      for (const std::string& p : created_paths_) ::unlink(p.c_str());
      created_paths_.clear();
      acceptors_.clear();
      return false;
    }
    created_paths_.push_back(f.path);
    acceptors_.push_back(std::make_unique<tunnel::Acceptor>(
        ring_, std::move(*fd),
        [this, &f](tunnel::Result<tunnel::unique_fd> c) { on_accept(f, std::move(c)); }));
    spdlog::info("forwarding {} to target {}", f.path, f.target);
  }
  for (auto& a : acceptors_) a->start();
  connect();
  return true;
}

void SourceForwarder::connect() {
  if (stopping_) return;
  tunnel::Result<std::vector<tunnel::ResolvedAddress>> addresses =
      tunnel::resolve(options_.connect);
  if (!addresses) {
    last_error_ = addresses.error().message;
    spdlog::warn("cannot connect to {}: {}", options_.connect.to_string(), last_error_);
    schedule_reconnect();
    return;
  }
  addresses_ = std::move(*addresses);
  try_address(0);
}

void SourceForwarder::try_address(std::size_t index) {
  address_index_ = index;
  const tunnel::ResolvedAddress& a = addresses_[index];
  connecting_.reset(::socket(a.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!connecting_) {
    on_connect(-errno);
    return;
  }
  io_uring_sqe* sqe = ring_.prepare(connect_op_);
  io_uring_prep_connect(sqe, connecting_.get(), reinterpret_cast<const sockaddr*>(&a.addr), a.len);
  connect_timer_.expires_after(options_.connect_timeout);
  connect_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec && connect_op_.busy()) ring_.cancel(connect_op_);
  });
}

void SourceForwarder::on_connect(int res) {
  connect_timer_.cancel();
  if (stopping_) {
    connecting_.reset();
    maybe_stopped();
    return;
  }
  if (res < 0) {
    last_error_ = res == -ECANCELED ? std::string("timed out") : std::strerror(-res);
    connecting_.reset();
    if (address_index_ + 1 < addresses_.size()) {
      try_address(address_index_ + 1);
      return;
    }
    spdlog::warn("cannot connect to {}: {}", options_.connect.to_string(), last_error_);
    if (refusals_.too_long(res == -ECONNREFUSED) && channel_ && channel_->detached()) {
      channel_->close(tunnel::daemon_gone_reason(last_error_));
      schedule_reconnect();
      return;
    }
    if (channel_) channel_->note_resume_failure(last_error_);
    schedule_reconnect();
    return;
  }
  refusals_.too_long(false);
  if (options_.tls) {
    handshake_ = std::make_unique<tunnel::TlsHandshake>(
        io_, ring_, std::move(connecting_), options_.tls, options_.tls_verify_host,
        options_.channel.handshake_timeout,
        [this](tunnel::Result<std::unique_ptr<tunnel::Transport>> r) {
          handshake_.reset();  // done runs once nothing of the handshake is in flight
          if (stopping_) {
            maybe_stopped();
          } else if (!r) {
            last_error_ = "TLS: " + r.error().message;
            spdlog::warn("channel to {} failed: {}", options_.connect.to_string(), last_error_);
            if (channel_) channel_->note_resume_failure(last_error_);
            schedule_reconnect();
          } else if (channel_ && channel_->detached()) {
            resume_channel(std::move(*r));
          } else {
            start_channel(std::move(*r));
          }
        });
    handshake_->start();
    return;
  }
  auto transport = std::make_unique<tunnel::SocketTransport>(ring_, std::move(connecting_));
  if (channel_ && channel_->detached()) {
    resume_channel(std::move(transport));
  } else {
    start_channel(std::move(transport));
  }
}

void SourceForwarder::resume_channel(std::unique_ptr<tunnel::Transport> transport) {
  resuming_ = std::make_unique<tunnel::ResumeExchange>(
      io_, ring_, std::move(transport), channel_->resume_request(),
      options_.channel.handshake_timeout,
      [this](tunnel::Result<tunnel::ResumeExchange::Resumed> r) {
        on_resume_attempt(std::move(r));
      });
  resuming_->start();
}

void SourceForwarder::on_resume_attempt(tunnel::Result<tunnel::ResumeExchange::Resumed> r) {
  resuming_.reset();  // done runs once nothing of the exchange is in flight
  if (stopping_) {
    maybe_stopped();
    return;
  }
  if (!channel_ || !channel_->detached()) {
    // The channel closed meanwhile (its grace period ended): start a new one.
    if (!channel_) connect();
    return;
  }
  if (r) {
    channel_->resume(std::move(r->transport), r->peer_received);
    return;
  }
  if (r.error().code == std::errc::permission_denied) {
    channel_->close(tunnel::resume_refused_reason(r.error().message));
    return;
  }
  last_error_ = "resume: " + r.error().message;
  spdlog::warn("resuming the channel to {} failed: {}", options_.connect.to_string(), last_error_);
  channel_->note_resume_failure(last_error_);
  schedule_reconnect();
}

void SourceForwarder::start_channel(std::unique_ptr<tunnel::Transport> transport) {
  const std::string peer = options_.connect.to_string();
  tunnel::ChannelEvents events;
  events.on_ready = [this, peer](const tunnel::Hello& hello) {
    was_ready_ = true;
    backoff_ = std::chrono::milliseconds(100);
    spdlog::info("channel connected to {} (destination host '{}')", peer, hello.hostname);
  };
  events.on_closed = [this](tunnel::Channel&, const std::string& reason) {
    on_channel_closed(reason);
  };
  events.on_lost = [this](tunnel::Channel&, const std::string& reason) {
    spdlog::warn("connection to {} lost ({}): reconnecting to resume the channel",
                 options_.connect.to_string(), reason);
    backoff_ = std::chrono::milliseconds(100);
    connect();
  };
  events.on_resumed = [this](tunnel::Channel&, std::chrono::steady_clock::duration outage) {
    backoff_ = std::chrono::milliseconds(100);
    spdlog::info("channel to {} resumed after {:.1f} s", options_.connect.to_string(),
                 std::chrono::duration<double>(outage).count());
  };
  channel_ = std::make_unique<tunnel::Channel>(io_, ring_, std::move(transport),
                                               tunnel::Channel::Role::initiator, peer,
                                               options_.channel, std::move(events));
  was_ready_ = false;
  channel_->start();
}

void SourceForwarder::on_channel_closed(const std::string& reason) {
  // Runs from a posted handler (see ChannelEvents::on_closed): destroying the channel is safe.
  channel_.reset();
  if (stopping_) {
    maybe_stopped();
    return;
  }
  // A connection attempt for resuming it is under way: it starts the next channel instead.
  if (resuming_ || handshake_ || connect_op_.busy() ||
      backoff_timer_.expiry() > std::chrono::steady_clock::now()) {
    spdlog::warn("channel lost to {}: {}; its local connections were closed",
                 options_.connect.to_string(), reason);
    return;
  }
  if (was_ready_) {
    spdlog::warn("channel lost to {}: {}; its local connections were closed",
                 options_.connect.to_string(), reason);
  } else {
    spdlog::warn("channel to {} failed before it was ready: {}", options_.connect.to_string(),
                 reason);
  }
  schedule_reconnect();
}

void SourceForwarder::schedule_reconnect() {
  if (stopping_) {
    maybe_stopped();
    return;
  }
  spdlog::info("reconnecting to {} in {} ms", options_.connect.to_string(), backoff_.count());
  backoff_timer_.expires_after(backoff_);
  backoff_ = std::min(backoff_ * 2, options_.max_backoff);
  backoff_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) connect();
  });
}

void SourceForwarder::on_accept(const Forward& f, tunnel::Result<tunnel::unique_fd> accepted) {
  if (!accepted) {
    spdlog::warn("accept on {} failed: {}", f.path, accepted.error().code.message());
    return;
  }
  tunnel::unique_fd client = std::move(*accepted);
  if (!channel_ || !channel_->ready()) {
    spdlog::warn("closing new connection on {}: the channel to {} is down ({})", f.path,
                 options_.connect.to_string(), last_error_.empty() ? "connecting" : last_error_);
    return;
  }
  channel_->open_stream(std::move(client), f.target, f.path);
}

void SourceForwarder::stop(std::function<void()> done) {
  stopping_ = true;
  on_stopped_ = std::move(done);
  backoff_timer_.cancel();
  connect_timer_.cancel();
  for (auto& a : acceptors_) a->stop();
  if (connect_op_.busy()) ring_.cancel(connect_op_);
  if (handshake_) handshake_->cancel();
  if (resuming_) resuming_->cancel();
  if (channel_) channel_->close("source is shutting down");
  maybe_stopped();
}

void SourceForwarder::maybe_stopped() {
  if (!on_stopped_ || channel_ || handshake_ || resuming_ || connect_op_.busy()) return;
  for (const std::string& p : created_paths_) ::unlink(p.c_str());
  created_paths_.clear();
  auto done = std::move(on_stopped_);
  on_stopped_ = nullptr;
  done();
}

}  // namespace nbdtunnel::engine
