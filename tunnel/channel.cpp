#include "tunnel/channel.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>
#include <sys/random.h>

#include <algorithm>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel {

namespace {
// With splice receive, the window we offer must fit twice in a stream's pipe.
ChannelConfig fit_window(ChannelConfig config, bool can_splice) {
  config.splice = config.splice && can_splice;
  if (!config.splice) return config;
  const std::uint32_t limit = splice_window_limit(config.window);
  if (limit < config.window) {
    spdlog::info(
        "splice receive: pipes are limited (fs.pipe-max-size); receive window {} KiB "
        "per stream instead of {} KiB",
        limit >> 10, config.window >> 10);
    config.window = limit;
  }
  return config;
}

PacketHeader reply_to(const PacketHeader& call, PacketStatus status) {
  PacketHeader r = call;
  r.type = static_cast<std::uint32_t>(PacketType::reply);
  r.status = static_cast<std::uint32_t>(status);
  return r;
}

std::vector<std::uint8_t> error_body(ErrorCode code, const std::string& message) {
  std::vector<std::uint8_t> body;
  encode_remote_error(body, make_error(code, message));
  return body;
}

// The reason a peer's ERROR body gives, or why it could not be read.
std::string error_reason(std::span<const std::uint8_t> body, const char* none) {
  Result<RemoteError> e = decode_remote_error(body);
  return e ? e->message.value_or(none) : e.error().message;
}
}  // namespace

Channel::Channel(boost::asio::io_context& io, Ring& ring, std::unique_ptr<Transport> transport,
                 Role role, std::string peer, ChannelConfig config, ChannelEvents events)
    : ring_(ring),
      role_(role),
      peer_(std::move(peer)),
      config_(fit_window(std::move(config), transport->can_splice())),
      events_(std::move(events)),
      transport_(std::move(transport)),
      splice_(config_.splice),
      poster_(ring),
      streams_(poster_, config_.max_streams),
      out_(*transport_, poster_, [this](const Error& e) { lost(e.message); }),
      in_(*transport_, ring_, poster_, *this, splice_),
      window_budget_left_(config_.window_budget),
      handshake_timer_(io),
      keepalive_timer_(io),
      grace_timer_(io) {
  streams_.on_drained([this] { maybe_finish_close(); });
  in_.on_idle([this] {
    maybe_finish_detach();
    maybe_finish_close();
  });
  out_.on_idle([this] {
    maybe_finish_detach();
    maybe_finish_close();
  });
}

Channel::~Channel() {
  for (std::size_t i = 0; i < budget_streams_.size(); ++i) config_.stream_budget->release();
}

void Channel::start() {
  handshake_timer_.expires_after(config_.handshake_timeout);
  handshake_timer_.async_wait([this, alive = liveness()](const boost::system::error_code& ec) {
    if (ec || alive.expired() || closing_ || hello_done_) return;
    fail(fmt::format("no HELLO within {} ms", config_.handshake_timeout.count()));
  });
  arm_keepalive();
  in_.start();
  if (role_ == Role::initiator) {
    hello_serial_ = streams_.next_serial();
    std::vector<std::uint8_t> body;
    encode_hello(body, local_hello());
    send_packet(make_header(kProgram, static_cast<std::uint32_t>(Proc::hello), PacketType::call,
                            hello_serial_, PacketStatus::ok),
                body);
  }
}

// ---- Liveness ----

void Channel::arm_keepalive() {
  keepalive_timer_.expires_after(config_.keepalive_interval);
  keepalive_timer_.async_wait([this, alive = liveness()](const boost::system::error_code& ec) {
    if (ec || alive.expired() || closing_) return;
    on_keepalive_tick();
  });
}

void Channel::on_keepalive_tick() {
  if (detached_) {  // the grace timer decides now
    arm_keepalive();
    return;
  }
  const auto silent = std::chrono::steady_clock::now() - in_.last_read();
  if (silent >= config_.keepalive_interval * config_.keepalive_count) {
    lost(fmt::format("peer silent for {} s (no data, no keepalive)",
                     std::chrono::duration_cast<std::chrono::seconds>(silent).count()));
    return;
  }
  // What arrived since the last ACK, however little, is acknowledged at least this often.
  if (resumable_ && in_.received() > acked_) send_ack();
  if (config_.idle_timeout.count() > 0 && hello_done_) {
    if (active()) {
      note_activity();
    } else if (const auto idle = std::chrono::steady_clock::now() - last_active_;
               idle >= config_.idle_timeout) {
      const auto secs = std::chrono::duration_cast<std::chrono::seconds>(idle).count();
      spdlog::info("{}: closing the channel: idle for {} s with no stream or call (idle timeout)",
                   peer_, secs);
      close(fmt::format("idle for {} s (idle timeout)", secs));
      return;
    }
  }
  if (silent >= config_.keepalive_interval && hello_done_) {
    send_packet(make_header(kKeepaliveProgram, static_cast<std::uint32_t>(KeepaliveProc::ping),
                            PacketType::message, 0, PacketStatus::ok));
  }
  arm_keepalive();
}

bool Channel::active() const {
  return streams_.size() > 0 || !pending_calls_.empty() || !served_calls_.empty();
}

// ---- Dispatch ----

void Channel::on_packet(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (closing_) return;
  dispatch(h, body);
  maybe_ack();
}

int Channel::splice_pipe(std::uint32_t serial, std::size_t n) {
  Stream* s = streams_.find(serial);
  return s ? s->splice_pipe(n) : -1;
}

int Channel::splice_pipe_rest(std::uint32_t serial) {
  Stream* s = streams_.find(serial);
  return s ? s->splice_pipe_rest() : -1;
}

void Channel::on_spliced(std::uint32_t serial, std::size_t n) {
  if (Stream* s = streams_.find(serial)) s->on_spliced(n);
  maybe_ack();
}

void Channel::on_read_ended(const Status& why) {
  if (why) {
    if (!resumable_) spdlog::info("{}: peer closed the connection", peer_);
    lost("peer closed the connection");
  } else {
    lost(why.error().message);
  }
}

void Channel::on_malformed(const Error& why) {
  fail(why.message);
}

void Channel::dispatch(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (!hello_done_) {
    dispatch_before_hello(h, body);
    return;
  }
  if (Status s = check_header(h); !s) {
    // The frame itself is intact, so only this packet is refused.
    reject(h, ErrorCode::protocol, s.error().message);
    return;
  }
  if (h.program == kKeepaliveProgram) {
    if (h.procedure == static_cast<std::uint32_t>(KeepaliveProc::ping)) {
      send_packet(make_header(kKeepaliveProgram, static_cast<std::uint32_t>(KeepaliveProc::pong),
                              PacketType::message, 0, PacketStatus::ok));
    }
    return;
  }
  if (h.program != kProgram) {
    reject(h, ErrorCode::unsupported, fmt::format("unknown program {:#x}", h.program));
    return;
  }
  if (h.version != kProgramVersion) {
    reject(h, ErrorCode::unsupported, version_mismatch(h.version));
    return;
  }
  const auto type = static_cast<PacketType>(h.type);
  const auto proc = static_cast<Proc>(h.procedure);
  switch (type) {
    case PacketType::call:
      if (proc == Proc::domain_migrate_open_tunnel && role_ == Role::responder) {
        handle_open(h, body);
      } else if (proc == Proc::hello) {
        reject(h, ErrorCode::protocol, "HELLO was already exchanged on this channel");
      } else if (events_.on_call) {
        if (served_calls_.size() >= config_.max_pending_calls) {
          reject(h, ErrorCode::limit,
                 fmt::format("{} calls already in progress on this channel", served_calls_.size()));
          return;
        }
        served_calls_.insert(h.serial);
        note_activity();
        events_.on_call(*this, h, body);
      } else {
        reject(h, ErrorCode::unsupported, fmt::format("unknown procedure {}", h.procedure));
      }
      return;
    case PacketType::reply:
      handle_reply(h, body);
      return;
    case PacketType::message:
      handle_message(h, body);
      return;
    case PacketType::stream:
      handle_stream(h, body);
      return;
  }
}

void Channel::reject(const PacketHeader& h, ErrorCode code, const std::string& message) {
  spdlog::warn("{}: refusing {} {} (serial {}): {}", peer_, type_name(h.type),
               procedure_name(h.program, h.procedure), h.serial, message);
  if (h.type == static_cast<std::uint32_t>(PacketType::call)) {
    send_packet(reply_to(h, PacketStatus::error), error_body(code, message));
  } else if (h.type == static_cast<std::uint32_t>(PacketType::stream) && h.program == kProgram) {
    send_error(h.serial, make_error(code, message));
  }
}

// Until HELLO is done the peer is a stranger: the one packet it may send is its side of HELLO.
// Anything else (keepalives and unknown programs included) ends the connection at once, with a
// reply saying why where the packet was a call.
void Channel::dispatch_before_hello(const PacketHeader& h, std::span<const std::uint8_t> body) {
  const auto type = static_cast<PacketType>(h.type);
  const bool ours = check_header(h) && h.program == kProgram;
  const bool hello = ours && h.procedure == static_cast<std::uint32_t>(Proc::hello);
  if (ours && role_ == Role::responder && type == PacketType::call &&
      h.procedure == static_cast<std::uint32_t>(Proc::resume) && h.version == kProgramVersion) {
    handle_resume_call(h, body);
  } else if (hello && h.version != kProgramVersion) {
    const std::string why = version_mismatch(h.version);
    reject(h, ErrorCode::unsupported, why);
    fail(why);
  } else if (hello && role_ == Role::responder && type == PacketType::call) {
    handle_hello_call(h, body);
  } else if (hello && role_ == Role::initiator && type == PacketType::reply &&
             h.serial == hello_serial_) {
    handle_hello_reply(h, body);
  } else {
    reject(h, ErrorCode::handshake_required, "HELLO must be the first call on a channel");
    fail(fmt::format("peer sent {} before HELLO", procedure_name(h.program, h.procedure)));
  }
}

std::string Channel::version_mismatch(std::uint32_t version) {
  return fmt::format("program version {} is not supported (this side speaks {})", version,
                     kProgramVersion);
}

// ---- HELLO ----

Hello Channel::local_hello() const {
  Hello h;
  h.host_id = config_.host_id;
  h.hostname = config_.hostname;
  h.window = config_.window;
  h.max_payload = config_.chunk;
  // The initiator asks; the responder answers with the ticket if it agreed.
  if (role_ == Role::initiator ? config_.resume_timeout.count() > 0 : resumable_) {
    h.features |= kFeatureResume;
    h.ticket = ticket_;
  }
  return h;
}

Status Channel::accept_peer_hello(const Hello& peer) {
  if (peer.version != kProgramVersion) {
    return input_error(fmt::format("peer speaks protocol version {}, this side speaks {}",
                                   peer.version, kProgramVersion));
  }
  peer_hello_ = peer;
  hello_done_ = true;
  handshake_timer_.cancel();
  in_.allow_full_packets();
  return {};
}

void Channel::handle_hello_call(const PacketHeader& h, std::span<const std::uint8_t> body) {
  Result<Hello> peer = decode_hello(body);
  Status accepted = peer ? accept_peer_hello(*peer) : Status(peer.error());
  if (!accepted) {
    const std::string why = "bad HELLO: " + accepted.error().message;
    reject(h, ErrorCode::protocol, why);
    fail(why);
    return;
  }
  if ((peer->features & kFeatureResume) && config_.resume_timeout.count() > 0) {
    if (::getrandom(ticket_.id.data(), ticket_.id.size(), 0) ==
            static_cast<ssize_t>(ticket_.id.size()) &&
        ::getrandom(ticket_.secret.data(), ticket_.secret.size(), 0) ==
            static_cast<ssize_t>(ticket_.secret.size())) {
      resumable_ = true;
      ticket_.timeout_ms = static_cast<std::uint32_t>(
          std::min<std::int64_t>(config_.resume_timeout.count(), kMaxResumeTimeoutMs));
      out_.retain();  // from the HELLO reply on
    } else {
      spdlog::warn("{}: no random bytes for a resume ticket: this channel is not resumable", peer_);
    }
  }
  std::vector<std::uint8_t> out;
  encode_hello(out, local_hello());
  send_packet(reply_to(h, PacketStatus::ok), out);
  spdlog::info("{}: channel ready (peer host '{}', id {}, over {})", peer_, peer->hostname,
               peer->host_id, transport_->describe());
  if (events_.on_ready) events_.on_ready(peer_hello_);
}

void Channel::handle_hello_reply(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (h.status == static_cast<std::uint32_t>(PacketStatus::error)) {
    fail("peer refused HELLO: " + error_reason(body, "no message"));
    return;
  }
  Result<Hello> peer = decode_hello(body);
  Status accepted = peer ? accept_peer_hello(*peer) : Status(peer.error());
  if (!accepted) {
    fail("bad HELLO reply: " + accepted.error().message);
    return;
  }
  if ((peer->features & kFeatureResume) && config_.resume_timeout.count() > 0 &&
      peer->ticket.timeout_ms > 0) {
    resumable_ = true;
    ticket_ = peer->ticket;
    out_.retain();
  }
  if (events_.on_ready) events_.on_ready(peer_hello_);
}

// ---- Calls ----

void Channel::call(std::uint32_t procedure, std::span<const std::uint8_t> body,
                   ReplyHandler on_reply) {
  const std::uint32_t serial = streams_.next_serial();
  if (closing_) {
    on_reply(make_header(kProgram, procedure, PacketType::reply, serial, PacketStatus::error),
             error_body(ErrorCode::shutdown, "channel closed: " + close_reason_));
    return;
  }
  pending_calls_.emplace(serial, std::move(on_reply));
  send_packet(make_header(kProgram, procedure, PacketType::call, serial, PacketStatus::ok), body);
}

void Channel::reply(const PacketHeader& call, std::span<const std::uint8_t> body) {
  served_calls_.erase(call.serial);
  send_packet(reply_to(call, PacketStatus::ok), body);
}

void Channel::reply_error(const PacketHeader& call, ErrorCode code, const std::string& message) {
  served_calls_.erase(call.serial);
  send_packet(reply_to(call, PacketStatus::error), error_body(code, message));
}

void Channel::handle_reply(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (auto it = pending_calls_.find(h.serial); it != pending_calls_.end()) {
    ReplyHandler handler = std::move(it->second);
    pending_calls_.erase(it);
    handler(h, body);
  } else if (h.procedure == static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel) &&
             role_ == Role::initiator) {
    handle_open_reply(h, body);
  } else {
    spdlog::warn("{}: ignoring unexpected reply to procedure {} serial {}", peer_, h.procedure,
                 h.serial);
  }
}

// ---- Opening streams ----

void Channel::handle_open(const PacketHeader& h, std::span<const std::uint8_t> body) {
  Result<OpenTunnel> open = decode_open_tunnel(body);
  if (!open) {
    reject(h, ErrorCode::protocol, open.error().message);
    return;
  }
  if (Status admitted = streams_.admit(h.serial); !admitted) {
    const bool limit = admitted.error().code == std::errc::too_many_files_open;
    if (limit && config_.counters) TrafficCounters::add(config_.counters->refused_channel);
    reject(h, limit ? ErrorCode::limit : ErrorCode::protocol, admitted.error().message);
    return;
  }
  Result<std::string> path =
      events_.resolve_target
          ? events_.resolve_target(*this, open->target)
          : Result<std::string>(input_error(fmt::format("unknown target '{}'", open->target)));
  if (!path) {
    reject(h, ErrorCode::unknown_target, path.error().message);
    return;
  }
  if (const auto& budget = config_.stream_budget) {
    if (!budget->try_acquire()) {
      if (config_.counters) TrafficCounters::add(config_.counters->refused_daemon);
      spdlog::warn(
          "{}: refusing a stream to '{}': this daemon has {} streams open, its limit "
          "(--max-streams)",
          peer_, open->target, budget->limit());
      reject(h, ErrorCode::limit, "the destination has reached its limit of open streams");
      return;
    }
    budget_streams_.insert(h.serial);
  }
  note_activity();
  streams_
      .add(std::make_unique<Stream>(link(), h.serial, open->target, *path, unique_fd{},
                                    stream_params()))
      .connect(*path);
}

void Channel::connected(std::uint32_t serial, const Status& result) {
  Stream* s = streams_.find(serial);
  if (s == nullptr) return;
  const PacketHeader call =
      make_header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                  PacketType::call, serial, PacketStatus::ok);
  if (!result) {
    const std::string msg =
        fmt::format("target '{}' ({}): {}", s->target(), s->tag(), result.error().message);
    spdlog::warn("{}: refusing stream {}: {}", peer_, serial, msg);
    reply_error(call, ErrorCode::target_unavailable, msg);
    s->abort(ErrorCode::target_unavailable, msg, false);
    return;
  }
  reply(call);
  spdlog::info("{}: stream {} opened to target '{}' ({})", peer_, serial, s->target(), s->tag());
  s->start(peer_hello_.window);
}

void Channel::open_stream(unique_fd local, const std::string& target, const std::string& tag) {
  if (!ready()) {
    spdlog::warn("{}: closing new connection on {}: the channel is not connected", peer_, tag);
    return;
  }
  if (streams_.full()) {
    spdlog::warn("{}: closing new connection on {}: {} streams already open", peer_, tag,
                 streams_.size());
    return;
  }
  const std::uint32_t serial = streams_.next_serial();
  streams_.add(
      std::make_unique<Stream>(link(), serial, target, tag, std::move(local), stream_params()));
  std::vector<std::uint8_t> body;
  encode_open_tunnel(body, OpenTunnel{target, 0});
  send_packet(make_header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                          PacketType::call, serial, PacketStatus::ok),
              body);
}

void Channel::handle_open_reply(const PacketHeader& h, std::span<const std::uint8_t> body) {
  Stream* s = streams_.find(h.serial);
  if (s == nullptr || s->state() != Stream::State::opening) {
    spdlog::warn("{}: ignoring OPEN_TUNNEL reply for unknown serial {}", peer_, h.serial);
    return;
  }
  if (h.status == static_cast<std::uint32_t>(PacketStatus::ok)) {
    spdlog::info("{}: stream {} ({}) open", peer_, h.serial, s->tag());
    s->start(peer_hello_.window);
    return;
  }
  const std::string why = error_reason(body, "no reason given");
  spdlog::warn("{}: stream {} ({}) refused: {}", peer_, h.serial, s->tag(), why);
  s->abort(ErrorCode::target_unavailable, why, false);
}

// ---- Stream traffic ----

void Channel::handle_stream(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (Stream* s = streams_.find(h.serial)) {
    s->on_packet(h.status, body);
    return;
  }
  // Packets may still be in flight for a stream this side already closed: drop them quietly.
  if (streams_.used(h.serial)) return;
  if (h.status == static_cast<std::uint32_t>(PacketStatus::error)) return;  // never echo errors
  reject(h, ErrorCode::protocol, fmt::format("no stream with serial {}", h.serial));
}

StreamParams Channel::stream_params() const {
  StreamParams p;
  p.window = config_.window;
  p.max_window = config_.max_window;
  p.chunk = std::min(config_.chunk, peer_hello_.window);
  p.splice = splice_;
  p.splice_tx = splice_ && !resumable_;
  p.tx_slack = resumable_ ? 2 * kMinAckInterval : 0;
  p.tx_max_slack = resumable_ ? 2 * kMaxAckInterval : 0;
  return p;
}

std::size_t Channel::take_window(std::size_t bytes) {
  const std::size_t taken = std::min(bytes, window_budget_left_);
  window_budget_left_ -= taken;
  return taken;
}

void Channel::handle_message(const PacketHeader& h, std::span<const std::uint8_t> body) {
  switch (static_cast<Proc>(h.procedure)) {
    case Proc::stream_credit:
      handle_credit(h, body);
      return;
    case Proc::ack:
      if (resumable_) {
        Result<std::uint64_t> received = decode_received(body);
        Status s = received ? out_.ack(*received) : Status(received.error());
        if (!s) fail("bad ACK: " + s.error().message);
        return;
      }
      break;
    case Proc::goodbye:
      if (resumable_) {
        Result<std::string> why = decode_goodbye(body);
        const std::string reason = why ? *why : "no reason given";
        spdlog::info("{}: peer closed the channel: {}", peer_, reason);
        close("peer closed the channel: " + reason);
        return;
      }
      break;
    default:
      break;
  }
  spdlog::warn("{}: ignoring unknown message procedure {}", peer_, h.procedure);
}

void Channel::handle_credit(const PacketHeader& h, std::span<const std::uint8_t> body) {
  Result<std::uint32_t> bytes = decode_credit(body);
  if (!bytes) {
    fail("malformed STREAM_CREDIT: " + bytes.error().message);
    return;
  }
  if (Stream* s = streams_.find(h.serial)) s->on_credit(*bytes);
}

void Channel::send_payload(BufferLease lease) {
  out_.push(std::move(lease));
}

void Channel::send_payload(PipeLease lease) {
  out_.push(std::move(lease));
}

void Channel::send_end_of_data(std::uint32_t serial) {
  send_packet(stream_header(serial, PacketStatus::cont));
}

void Channel::send_finish(std::uint32_t serial) {
  send_packet(stream_header(serial, PacketStatus::ok));
}

void Channel::send_error(std::uint32_t serial, const RemoteError& e) {
  std::vector<std::uint8_t> body;
  encode_remote_error(body, e);
  send_packet(stream_header(serial, PacketStatus::error), body);
}

void Channel::grant_credit(std::uint32_t serial, std::uint32_t bytes) {
  std::vector<std::uint8_t> body;
  encode_credit(body, bytes);
  send_packet(make_header(kProgram, static_cast<std::uint32_t>(Proc::stream_credit),
                          PacketType::message, serial, PacketStatus::ok),
              body);
}

void Channel::done(std::uint32_t serial) {
  if (budget_streams_.erase(serial) > 0) config_.stream_budget->release();
  streams_.release(serial);
  in_.stream_released(serial);
}

std::vector<const Stream*> Channel::open_streams() const {
  const std::vector<Stream*> open = streams_.open_streams();
  return {open.begin(), open.end()};
}

void Channel::send_packet(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (closing_) return;
  if (Status s = out_.push(make_packet(h, body)); !s) fail(s.error().message);
}

// ---- Resumption ----

void Channel::maybe_ack() {
  if (!resumable_ || detached_ || closing_) return;
  const std::size_t interval = std::clamp(kAckShare / std::max<std::size_t>(streams_.size(), 1),
                                          kMinAckInterval, kMaxAckInterval);
  if (in_.received() - acked_ >= interval) send_ack();
}

void Channel::send_ack() {
  acked_ = in_.received();
  std::vector<std::uint8_t> body;
  encode_received(body, acked_);
  send_packet(make_header(kProgram, static_cast<std::uint32_t>(Proc::ack), PacketType::message, 0,
                          PacketStatus::ok),
              body);
}

void Channel::lost(const std::string& reason) {
  if (closing_ || detached_) return;
  if (!resumable_ || !hello_done_) {
    fail(reason);
    return;
  }
  detached_ = true;
  ++losses_;
  lost_reason_ = reason;
  last_resume_failure_.clear();
  lost_at_ = std::chrono::steady_clock::now();
  const std::chrono::milliseconds grace(ticket_.timeout_ms);
  resume_deadline_ = lost_at_ + grace;
  spdlog::warn("{}: connection lost ({}); the channel waits {} s to be resumed", peer_, reason,
               grace.count() / 1000.0);
  in_.stop();
  out_.detach();
  transport_->shutdown();
  arm_grace_timer();
  if (events_.on_lost) events_.on_lost(*this, reason);
  maybe_finish_detach();
}

void Channel::arm_grace_timer() {
  grace_timer_.expires_at(resume_deadline_);
  grace_timer_.async_wait([this, alive = liveness()](const boost::system::error_code& ec) {
    if (ec || alive.expired() || !detached_ || closing_) return;
    fail(not_resumed_reason());
  });
}

void Channel::shorten_grace(std::chrono::milliseconds most, const std::string& why) {
  if (!detached_ || closing_) return;
  const auto deadline = std::chrono::steady_clock::now() + most;
  if (deadline >= resume_deadline_) return;
  spdlog::info("{}: {}: waiting at most {} s more to be resumed", peer_, why,
               most.count() / 1000.0);
  resume_deadline_ = deadline;
  last_resume_failure_ = why;
  arm_grace_timer();
}

std::string Channel::not_resumed_reason() const {
  std::string why = fmt::format("connection lost ({}) and not resumed within {} s", lost_reason_,
                                ticket_.timeout_ms / 1000.0);
  if (!last_resume_failure_.empty()) why += "; last attempt: " + last_resume_failure_;
  return why;
}

// Once nothing of the lost connection is in flight, it goes; a new one waiting takes its place.
void Channel::maybe_finish_detach() {
  if (!detached_ || closing_ || in_.busy() || out_.busy()) return;
  transport_.reset();
  if (pending_attach_) attach_pending();
}

ResumeRequest Channel::resume_request() const {
  ResumeRequest r;
  r.id = ticket_.id;
  r.secret = ticket_.secret;
  r.received = in_.received();
  return r;
}

void Channel::resume(std::unique_ptr<Transport> transport, std::uint64_t peer_received) {
  if (closing_ || !detached_) return;  // the transport closes as it goes
  pending_attach_ = PendingAttach{std::move(transport), peer_received, std::nullopt};
  maybe_finish_detach();
}

bool Channel::ticket_matches(const ResumeRequest& request) const {
  return resumable_ && !closing_ && role_ == Role::responder && request.id == ticket_.id &&
         CRYPTO_memcmp(request.secret.data(), ticket_.secret.data(), ticket_.secret.size()) == 0;
}

void Channel::handle_resume_call(const PacketHeader& h, std::span<const std::uint8_t> body) {
  Result<ResumeRequest> request = decode_resume_request(body);
  if (!request) {
    reject(h, ErrorCode::protocol, request.error().message);
    fail("bad RESUME: " + request.error().message);
    return;
  }
  Channel* target = events_.find_resumable ? events_.find_resumable(*request) : nullptr;
  if (target == nullptr || target == this || !target->ticket_matches(*request)) {
    // Whether the id exists is not for a peer without the secret to learn.
    const std::string why =
        "no channel to resume with this ticket (it was closed, its grace "
        "period ended, or the destination restarted)";
    reject(h, ErrorCode::not_resumable, why);
    fail("RESUME refused: " + why);
    return;
  }
  if (in_.unread() > 0) {
    reject(h, ErrorCode::protocol, "data after RESUME before its reply");
    fail("peer sent data after RESUME before its reply");
    return;
  }
  // This connection now belongs to the channel it resumes: stop using it and hand it over.
  in_.stop();
  std::unique_ptr<Transport> transport = std::move(transport_);
  target->adopt(std::move(transport), request->received, h);
  close("handed over to the channel it resumed");
}

void Channel::adopt(std::unique_ptr<Transport> transport, std::uint64_t peer_received,
                    const PacketHeader& call) {
  pending_attach_ = PendingAttach{std::move(transport), peer_received, call};
  if (!detached_) {
    // The old connection looks alive from here, but the peer has given up on it.
    lost("the peer resumed the channel on a new connection");
    return;  // maybe_finish_detach attaches once the old connection is gone
  }
  poster_.post([this] { maybe_finish_detach(); });
}

void Channel::attach_pending() {
  PendingAttach a = std::move(*pending_attach_);
  pending_attach_.reset();
  WriteQueue::ControlPacket first;
  if (a.resume_call) {
    std::vector<std::uint8_t> body;
    encode_received(body, in_.received());
    first = make_packet(reply_to(*a.resume_call, PacketStatus::ok), body);
  }
  const std::uint64_t resend = out_.sent() - std::min(out_.sent(), a.peer_received);
  if (Status s = out_.attach(*a.transport, a.peer_received, std::move(first)); !s) {
    fail("cannot resume the channel: " + s.error().message);
    return;
  }
  transport_ = std::move(a.transport);
  detached_ = false;
  grace_timer_.cancel();
  acked_ = in_.received();  // the peer learnt it from the RESUME exchange
  in_.attach(*transport_);
  bytes_resent_ += resend;
  const auto outage = std::chrono::steady_clock::now() - lost_at_;
  spdlog::info("{}: channel resumed after {:.1f} s over {} ({} bytes sent again, {} streams kept)",
               peer_, std::chrono::duration<double>(outage).count(), transport_->describe(), resend,
               streams_.size());
  if (events_.on_resumed) events_.on_resumed(*this, outage);
}

// A peer that closes a resumable channel on purpose says so, or the other side would wait out
// its grace period. Best effort: written now if no other packet is half-written.
void Channel::send_goodbye(const std::string& reason) {
  if (!resumable_ || detached_ || !transport_ || !out_.at_packet_boundary()) return;
  std::vector<std::uint8_t> body;
  encode_goodbye(body, reason);
  const std::vector<std::uint8_t> packet =
      make_packet(make_header(kProgram, static_cast<std::uint32_t>(Proc::goodbye),
                              PacketType::message, 0, PacketStatus::ok),
                  body);
  const iovec v{const_cast<std::uint8_t*>(packet.data()), packet.size()};
  (void)transport_->write(std::span(&v, 1), false);
  if (transport_->has_pending_output()) (void)transport_->flush_pending();
}

// ---- Teardown ----

void Channel::fail(const std::string& reason) {
  if (closing_) return;
  spdlog::warn("{}: {}", peer_, reason);
  close(reason);
}

void Channel::abort_streams(const std::string& reason) {
  for (Stream* s : streams_.open_streams()) s->abort(ErrorCode::shutdown, reason, true);
}

void Channel::close(const std::string& reason) {
  if (closing_) return;
  if (!reason.starts_with("peer closed the channel")) send_goodbye(reason);
  closing_ = true;
  close_reason_ = reason;
  handshake_timer_.cancel();
  keepalive_timer_.cancel();
  grace_timer_.cancel();
  pending_attach_.reset();
  for (Stream* s : streams_.open_streams()) {
    s->abort(ErrorCode::shutdown, "channel closed: " + reason, false);
  }
  // What the socket takes now goes (an ERROR reply that explains the close); the rest will
  // never be sent: its leases return to their (now closed) streams.
  if (transport_) out_.flush_now();
  out_.close();
  // Calls still waiting for a reply fail now, each with the reason.
  auto pending = std::move(pending_calls_);
  pending_calls_.clear();
  for (auto& [serial, handler] : pending) {
    handler(make_header(kProgram, 0, PacketType::reply, serial, PacketStatus::error),
            error_body(ErrorCode::shutdown, "channel closed: " + reason));
  }
  in_.stop();
  if (transport_) transport_->shutdown();
  maybe_finish_close();
}

void Channel::maybe_finish_close() {
  if (!closing_ || close_reported_) return;
  if (in_.busy() || out_.busy() || !streams_.drained()) return;
  close_reported_ = true;
  poster_.post([this] {
    // The callback may destroy this channel: keep it and the reason off the channel first.
    auto on_closed = std::move(events_.on_closed);
    const std::string reason = close_reason_;
    if (on_closed) on_closed(*this, reason);
  });
}

}  // namespace nbdtunnel::tunnel
