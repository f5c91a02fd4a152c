#include "tunnel/channel.hpp"

#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstring>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel {

namespace {
constexpr std::size_t kReadBuffer = 4u << 20;
constexpr std::size_t kMaxIov = 64;
// Reads the splice path makes in a row before it lets other work on the thread run.
constexpr int kPumpBudget = 64;
// Control packets we queue but the peer does not read: past this, the peer is not keeping up.
constexpr std::size_t kMaxControlBytes = 8u << 20;

// With splice receive, the window we offer must fit twice in a stream's pipe.
ChannelConfig fit_window(ChannelConfig config) {
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

PacketHeader header(std::uint32_t program, std::uint32_t proc, PacketType type,
                    std::uint32_t serial, PacketStatus status) {
  return make_header(program, proc, type, serial, status);
}
}  // namespace

Channel::Channel(boost::asio::io_context& io, Ring& ring, unique_fd socket, Role role,
                 std::string peer, ChannelConfig config, ChannelEvents events)
    : io_(io),
      ring_(ring),
      socket_(std::move(socket)),
      role_(role),
      peer_(std::move(peer)),
      config_(fit_window(std::move(config))),
      events_(std::move(events)),
      rbuf_(kReadBuffer),
      iov_(kMaxIov),
      handshake_timer_(io),
      keepalive_timer_(io) {
  read_op_.set_handler([this](int res, std::uint32_t) {
    if (config_.splice) {
      on_read_ready(res);
    } else {
      on_read(res);
    }
  });
  write_op_.set_handler([this](int res, std::uint32_t) { on_write(res); });
  const int one = 1;
  ::setsockopt(socket_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // The splice path reads with plain syscalls that must not block; io_uring operations on the
  // socket ignore O_NONBLOCK and still wait for readiness.
  if (config_.splice) set_nonblocking(socket_.get());
}

Channel::~Channel() {
  *alive_ = false;
}

void Channel::start() {
  last_rx_ = std::chrono::steady_clock::now();
  wanted_ = kPrefixSize;
  start_timers();
  arm_read();
  if (role_ == Role::initiator) {
    hello_serial_ = next_serial_++;
    std::vector<std::uint8_t> body;
    encode_hello(body, local_hello());
    send_packet(header(kProgram, static_cast<std::uint32_t>(Proc::hello), PacketType::call,
                       hello_serial_, PacketStatus::ok),
                body);
  }
}

Hello Channel::local_hello() const {
  Hello h;
  h.host_id = config_.host_id;
  h.hostname = config_.hostname;
  h.window = config_.window;
  h.max_payload = config_.chunk;
  return h;
}

void Channel::start_timers() {
  std::weak_ptr<bool> alive = alive_;
  handshake_timer_.expires_after(config_.handshake_timeout);
  handshake_timer_.async_wait([this, alive](const boost::system::error_code& ec) {
    if (ec || alive.expired() || closing_ || hello_done_) return;
    fail(fmt::format("no HELLO within {} ms", config_.handshake_timeout.count()));
  });
  keepalive_timer_.expires_after(config_.keepalive_interval);
  keepalive_timer_.async_wait([this, alive](const boost::system::error_code& ec) {
    if (ec || alive.expired() || closing_) return;
    on_keepalive_tick();
  });
}

void Channel::on_keepalive_tick() {
  const auto silent = std::chrono::steady_clock::now() - last_rx_;
  if (silent >= config_.keepalive_interval * config_.keepalive_count) {
    fail(fmt::format("peer silent for {} s (no data, no keepalive)",
                     std::chrono::duration_cast<std::chrono::seconds>(silent).count()));
    return;
  }
  if (silent >= config_.keepalive_interval && hello_done_) {
    send_packet(header(kKeepaliveProgram, static_cast<std::uint32_t>(KeepaliveProc::ping),
                       PacketType::message, 0, PacketStatus::ok));
  }
  std::weak_ptr<bool> alive = alive_;
  keepalive_timer_.expires_after(config_.keepalive_interval);
  keepalive_timer_.async_wait([this, alive](const boost::system::error_code& ec) {
    if (ec || alive.expired() || closing_) return;
    on_keepalive_tick();
  });
}

// ---- Read side ----

void Channel::arm_read() {
  if (closing_ || read_op_.busy()) return;
  if (config_.splice) {
    pump_spliced();
    return;
  }
  io_uring_sqe* sqe = ring_.prepare(read_op_);
  io_uring_prep_recv(sqe, socket_.get(), rbuf_.data() + rend_, rbuf_.size() - rend_, 0);
}

// Splice receive path. io_uring runs every splice on a worker thread, which costs two context
// switches per payload (measured: more CPU than copying), so the splices and the small header
// reads run here as non-blocking syscalls, and io_uring only waits for readiness.
void Channel::pump_spliced() {
  for (int i = 0; i < kPumpBudget; ++i) {
    if (closing_) return;
    if (step_ == ReadStep::splice && splice_target_gone()) continue;
    ssize_t n = 0;
    if (step_ == ReadStep::splice) {
      n = ::splice(socket_.get(), nullptr, splice_stream_->pipe_write_fd(), nullptr, wanted_,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } else {
      n = ::recv(socket_.get(), rbuf_.data() + rend_, wanted_, MSG_DONTWAIT);
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wait_readable();
      return;
    }
    on_read_spliced(n < 0 ? -errno : static_cast<int>(n));
  }
  // Budget spent: let the rest of this thread's work run, then go on.
  defer([this] { pump_spliced(); });
}

// The read would block: the socket is empty or, when splicing, the stream's pipe is full.
void Channel::wait_readable() {
  int fd = socket_.get();
  short events = POLLIN;
  if (step_ == ReadStep::splice) {
    pollfd pipe{splice_stream_->pipe_write_fd(), POLLOUT, 0};
    if (::poll(&pipe, 1, 0) == 0) {
      fd = pipe.fd;
      events = POLLOUT;
    }
  }
  io_uring_sqe* sqe = ring_.prepare(read_op_);
  io_uring_prep_poll_add(sqe, fd, static_cast<unsigned>(events));
}

void Channel::on_read_ready(int res) {
  if (closing_) {
    maybe_finish_close();
    return;
  }
  if (res < 0 && res != -ECANCELED) {
    fail(fmt::format("waiting for data failed: {}", std::strerror(-res)));
    return;
  }
  pump_spliced();
}

// The stream a payload is being spliced into closed: drop the rest of the payload. True if so.
bool Channel::splice_target_gone() {
  Stream* s = find(splice_serial_);
  if (s == splice_stream_ && s->state() == Stream::State::open) return false;
  splice_stream_->set_splicing(false);
  if (s != splice_stream_) release(*splice_stream_);  // reaping waited for the splice to end
  step_ = ReadStep::discard;
  rend_ = 0;
  return true;
}

// Handles a read that returned end of stream or an error; true if it did.
bool Channel::read_ended(int res) {
  if (res == 0) {
    spdlog::info("{}: peer closed the connection", peer_);
    close("peer closed the connection");
    return true;
  }
  if (res < 0) {
    fail(fmt::format("receive failed: {}", std::strerror(-res)));
    return true;
  }
  return false;
}

// Splice receive path: read exactly the prefix, then either the body (control packets, or a
// payload its stream cannot take by splice) or splice the payload straight into the stream.
void Channel::on_read_spliced(int res) {
  if (step_ == ReadStep::splice && splice_stream_) splice_stream_->set_splicing(false);
  if (read_ended(res)) return;
  last_rx_ = std::chrono::steady_clock::now();
  const auto n = static_cast<std::size_t>(res);
  wanted_ -= n;
  if (step_ == ReadStep::splice) {
    Stream* s = find(splice_serial_);
    if (s == splice_stream_) s->on_spliced(n);
    if (s != splice_stream_) release(*splice_stream_);  // closed meanwhile: reap it now
    if (wanted_ > 0 && (s != splice_stream_ || s->state() != Stream::State::open)) {
      step_ = ReadStep::discard;  // the stream went away mid-payload: drop the rest
    }
  } else {
    rend_ += n;
  }
  if (step_ == ReadStep::prefix && wanted_ > 0) {
    // A bad length is refused as soon as it is in, not after a prefix that may never complete.
    const DecodeResult d = decode_prefix(std::span<const std::uint8_t>(rbuf_.data(), rend_));
    if (d.status == DecodeResult::Status::error) {
      fail(fmt::format("malformed data from peer: {}", d.error));
      return;
    }
  }
  if (wanted_ == 0) {
    switch (step_) {
      case ReadStep::prefix: {
        DecodeResult d = decode_prefix(std::span<const std::uint8_t>(rbuf_.data(), rend_));
        if (d.status != DecodeResult::Status::frame) {
          fail(fmt::format("malformed data from peer: {}", d.error));
          return;
        }
        on_prefix(d.header);
        break;
      }
      case ReadStep::body:
        handle(current_, std::span<const std::uint8_t>(rbuf_.data() + kPrefixSize,
                                                       current_.length - kPrefixSize));
        step_ = ReadStep::prefix;
        break;
      case ReadStep::splice:
      case ReadStep::discard:
        step_ = ReadStep::prefix;
        break;
    }
    if (closing_) return;
    if (step_ == ReadStep::prefix) {
      rend_ = 0;
      wanted_ = kPrefixSize;
    }
  } else if (step_ == ReadStep::discard) {
    rend_ = 0;  // discarded bytes need no room
  }
  if (step_ == ReadStep::splice) splice_stream_->set_splicing(true);
}

void Channel::on_prefix(const PacketHeader& h) {
  current_ = h;
  const std::size_t body = h.length - kPrefixSize;
  if (body == 0) {
    handle(h, {});
    step_ = ReadStep::prefix;
    return;
  }
  Stream* s = nullptr;
  if (h.program == kProgram && h.type == static_cast<std::uint32_t>(PacketType::stream) &&
      h.status == static_cast<std::uint32_t>(PacketStatus::cont)) {
    s = find(h.serial);
  }
  if (s != nullptr && s->can_splice(body)) {
    step_ = ReadStep::splice;
    splice_serial_ = h.serial;
    splice_stream_ = s;
  } else {
    step_ = ReadStep::body;
  }
  wanted_ = body;
}

void Channel::on_read(int res) {
  if (closing_) {
    maybe_finish_close();
    return;
  }
  if (read_ended(res)) return;
  last_rx_ = std::chrono::steady_clock::now();
  rend_ += static_cast<std::size_t>(res);
  while (!closing_) {
    DecodeResult d = decode_packet(
        std::span<const std::uint8_t>(rbuf_.data() + rstart_, rend_ - rstart_), kMaxPacket);
    if (d.status == DecodeResult::Status::need_more) break;
    if (d.status == DecodeResult::Status::error) {
      fail(fmt::format("malformed data from peer: {}", d.error));
      return;
    }
    handle(d.header, d.body);
    rstart_ += d.consumed;
  }
  if (closing_) return;
  if (rstart_ == rend_) {
    rstart_ = rend_ = 0;
  } else if (rbuf_.size() - rend_ < kMaxPacket) {
    std::memmove(rbuf_.data(), rbuf_.data() + rstart_, rend_ - rstart_);
    rend_ -= rstart_;
    rstart_ = 0;
  }
  arm_read();
}

void Channel::handle(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (std::string e = check_header(h); !e.empty()) {
    // The frame itself is intact, so only this packet is refused.
    reject(h, ErrorCode::protocol, e);
    return;
  }
  if (h.program == kKeepaliveProgram) {
    handle_keepalive(h);
    return;
  }
  if (h.program != kProgram) {
    reject(h, ErrorCode::unsupported, fmt::format("unknown program {:#x}", h.program));
    return;
  }
  if (h.version != kProgramVersion) {
    reject(h, ErrorCode::unsupported,
           fmt::format("program version {} is not supported (this side speaks {})", h.version,
                       kProgramVersion));
    return;
  }
  const auto type = static_cast<PacketType>(h.type);
  const auto proc = static_cast<Proc>(h.procedure);
  if (!hello_done_) {
    if (role_ == Role::responder && type == PacketType::call && proc == Proc::hello) {
      handle_hello_call(h, body);
    } else if (role_ == Role::initiator && type == PacketType::reply && proc == Proc::hello &&
               h.serial == hello_serial_) {
      handle_hello_reply(h, body);
    } else {
      reject(h, ErrorCode::handshake_required, "HELLO must be the first call on a channel");
      fail(fmt::format("peer sent {} procedure {} before HELLO", type_name(h.type), h.procedure));
    }
    return;
  }
  switch (type) {
    case PacketType::call:
      if (proc == Proc::domain_migrate_open_tunnel && role_ == Role::responder) {
        handle_open(h, body);
      } else if (proc == Proc::hello) {
        reject(h, ErrorCode::protocol, "HELLO was already exchanged on this channel");
      } else if ((proc == Proc::prepare || proc == Proc::finish) && role_ == Role::responder &&
                 events_.on_call) {
        events_.on_call(*this, h, body);
      } else {
        reject(h, ErrorCode::unsupported, fmt::format("unknown procedure {}", h.procedure));
      }
      return;
    case PacketType::reply:
      if (auto it = pending_calls_.find(h.serial); it != pending_calls_.end()) {
        ReplyHandler handler = std::move(it->second);
        pending_calls_.erase(it);
        handler(h, body);
      } else if (proc == Proc::domain_migrate_open_tunnel && role_ == Role::initiator) {
        handle_open_reply(h, body);
      } else {
        spdlog::warn("{}: ignoring unexpected reply to procedure {} serial {}", peer_, h.procedure,
                     h.serial);
      }
      return;
    case PacketType::message:
      if (proc == Proc::stream_credit) {
        handle_credit(h, body);
      } else {
        spdlog::warn("{}: ignoring unknown message procedure {}", peer_, h.procedure);
      }
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
    std::vector<std::uint8_t> body;
    encode_remote_error(body, make_error(code, message));
    PacketHeader r = h;
    r.type = static_cast<std::uint32_t>(PacketType::reply);
    r.status = static_cast<std::uint32_t>(PacketStatus::error);
    send_packet(r, body);
  } else if (h.type == static_cast<std::uint32_t>(PacketType::stream) && h.program == kProgram) {
    send_stream_error(h.serial, make_error(code, message));
  }
}

bool Channel::accept_peer_hello(const Hello& peer, std::string& error) {
  if (peer.version != kProgramVersion) {
    error = fmt::format("peer speaks protocol version {}, this side speaks {}", peer.version,
                        kProgramVersion);
    return false;
  }
  peer_hello_ = peer;
  hello_done_ = true;
  handshake_timer_.cancel();
  return true;
}

void Channel::handle_hello_call(const PacketHeader& h, std::span<const std::uint8_t> body) {
  Hello peer;
  std::string error = decode_hello(body, peer);
  if (error.empty() && accept_peer_hello(peer, error)) {
    std::vector<std::uint8_t> out;
    encode_hello(out, local_hello());
    PacketHeader r = h;
    r.type = static_cast<std::uint32_t>(PacketType::reply);
    send_packet(r, out);
    spdlog::info("{}: channel ready (peer host '{}', id {})", peer_, peer.hostname, peer.host_id);
    if (events_.on_ready) events_.on_ready(peer_hello_);
    return;
  }
  reject(h, ErrorCode::protocol, "bad HELLO: " + error);
  fail("bad HELLO: " + error);
}

void Channel::handle_hello_reply(const PacketHeader& h, std::span<const std::uint8_t> body) {
  std::string error;
  if (h.status == static_cast<std::uint32_t>(PacketStatus::error)) {
    RemoteError e;
    error = decode_remote_error(body, e);
    fail("peer refused HELLO: " + (error.empty() ? e.message.value_or("no message") : error));
    return;
  }
  Hello peer;
  error = decode_hello(body, peer);
  if (error.empty() && accept_peer_hello(peer, error)) {
    if (events_.on_ready) events_.on_ready(peer_hello_);
    return;
  }
  fail("bad HELLO reply: " + error);
}

void Channel::handle_open(const PacketHeader& h, std::span<const std::uint8_t> body) {
  OpenTunnel open;
  if (std::string e = decode_open_tunnel(body, open); !e.empty()) {
    reject(h, ErrorCode::protocol, e);
    return;
  }
  if (h.serial <= max_open_serial_) {
    reject(h, ErrorCode::protocol, fmt::format("stream serial {} was already used", h.serial));
    return;
  }
  max_open_serial_ = h.serial;
  if (streams_.size() >= config_.max_streams) {
    reject(h, ErrorCode::limit,
           fmt::format("too many streams on this channel (limit {})", config_.max_streams));
    return;
  }
  std::string error;
  std::optional<std::string> path =
      events_.resolve_target ? events_.resolve_target(open.target, error) : std::nullopt;
  if (!path) {
    reject(h, ErrorCode::unknown_target,
           error.empty() ? fmt::format("unknown target '{}'", open.target) : error);
    return;
  }
  const std::uint32_t chunk = std::min(config_.chunk, peer_hello_.window);
  auto stream = std::make_unique<Stream>(*this, h.serial, open.target, *path, unique_fd{},
                                         config_.window, chunk, config_.splice);
  Stream& s = *stream;
  streams_.emplace(h.serial, std::move(stream));
  s.connect(*path);
}

void Channel::stream_connected(Stream& s, int res) {
  PacketHeader r = header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                          PacketType::reply, s.serial(), PacketStatus::ok);
  if (res < 0) {
    const std::string msg = fmt::format("target '{}' ({}): connect failed: {}", s.target(), s.tag(),
                                        std::strerror(-res));
    spdlog::warn("{}: refusing stream {}: {}", peer_, s.serial(), msg);
    std::vector<std::uint8_t> body;
    encode_remote_error(body, make_error(ErrorCode::target_unavailable, msg));
    r.status = static_cast<std::uint32_t>(PacketStatus::error);
    send_packet(r, body);
    s.abort(ErrorCode::target_unavailable, msg, false);
    return;
  }
  send_packet(r);
  spdlog::info("{}: stream {} opened to target '{}' ({})", peer_, s.serial(), s.target(), s.tag());
  s.start(peer_hello_.window);
}

void Channel::open_stream(unique_fd local, const std::string& target, const std::string& tag) {
  if (!ready()) {
    spdlog::warn("{}: closing new connection on {}: the channel is not connected", peer_, tag);
    return;
  }
  if (streams_.size() >= config_.max_streams) {
    spdlog::warn("{}: closing new connection on {}: {} streams already open", peer_, tag,
                 streams_.size());
    return;
  }
  const std::uint32_t serial = next_serial_++;
  const std::uint32_t chunk = std::min(config_.chunk, peer_hello_.window);
  streams_.emplace(serial, std::make_unique<Stream>(*this, serial, target, tag, std::move(local),
                                                    config_.window, chunk, config_.splice));
  std::vector<std::uint8_t> body;
  encode_open_tunnel(body, OpenTunnel{target, 0});
  send_packet(header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                     PacketType::call, serial, PacketStatus::ok),
              body);
}

void Channel::call(Proc proc, std::span<const std::uint8_t> body, ReplyHandler on_reply) {
  const std::uint32_t serial = next_serial_++;
  if (closing_) {
    std::vector<std::uint8_t> err;
    encode_remote_error(err, make_error(ErrorCode::shutdown, "channel closed: " + close_reason_));
    on_reply(header(kProgram, static_cast<std::uint32_t>(proc), PacketType::reply, serial,
                    PacketStatus::error),
             err);
    return;
  }
  pending_calls_.emplace(serial, std::move(on_reply));
  send_packet(header(kProgram, static_cast<std::uint32_t>(proc), PacketType::call, serial,
                     PacketStatus::ok),
              body);
}

void Channel::reply(const PacketHeader& call, std::span<const std::uint8_t> body) {
  PacketHeader r = call;
  r.type = static_cast<std::uint32_t>(PacketType::reply);
  r.status = static_cast<std::uint32_t>(PacketStatus::ok);
  send_packet(r, body);
}

void Channel::reply_error(const PacketHeader& call, ErrorCode code, const std::string& message) {
  std::vector<std::uint8_t> body;
  encode_remote_error(body, make_error(code, message));
  PacketHeader r = call;
  r.type = static_cast<std::uint32_t>(PacketType::reply);
  r.status = static_cast<std::uint32_t>(PacketStatus::error);
  send_packet(r, body);
}

void Channel::handle_open_reply(const PacketHeader& h, std::span<const std::uint8_t> body) {
  Stream* s = find(h.serial);
  if (s == nullptr || s->state() != Stream::State::opening) {
    spdlog::warn("{}: ignoring OPEN_TUNNEL reply for unknown serial {}", peer_, h.serial);
    return;
  }
  if (h.status == static_cast<std::uint32_t>(PacketStatus::ok)) {
    spdlog::info("{}: stream {} ({}) open", peer_, h.serial, s->tag());
    s->start(peer_hello_.window);
    return;
  }
  RemoteError e;
  const std::string err = decode_remote_error(body, e);
  const std::string why = err.empty() ? e.message.value_or("no reason given") : err;
  spdlog::warn("{}: stream {} ({}) refused: {}", peer_, h.serial, s->tag(), why);
  s->abort(ErrorCode::target_unavailable, why, false);
}

Stream* Channel::find(std::uint32_t serial) {
  auto it = streams_.find(serial);
  return it == streams_.end() ? nullptr : it->second.get();
}

void Channel::handle_stream(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (Stream* s = find(h.serial)) {
    s->on_packet(h.status, body);
    return;
  }
  // Packets may still be in flight for a stream this side already closed: drop them quietly.
  const std::uint32_t highest = role_ == Role::initiator ? next_serial_ - 1 : max_open_serial_;
  if (h.serial != 0 && h.serial <= highest) return;
  if (h.status == static_cast<std::uint32_t>(PacketStatus::error)) return;  // never echo errors
  reject(h, ErrorCode::protocol, fmt::format("no stream with serial {}", h.serial));
}

void Channel::handle_credit(const PacketHeader& h, std::span<const std::uint8_t> body) {
  std::uint32_t bytes = 0;
  if (std::string e = decode_credit(body, bytes); !e.empty()) {
    fail("malformed STREAM_CREDIT: " + e);
    return;
  }
  if (Stream* s = find(h.serial)) s->on_credit(bytes);
}

void Channel::handle_keepalive(const PacketHeader& h) {
  if (h.procedure == static_cast<std::uint32_t>(KeepaliveProc::ping)) {
    send_packet(header(kKeepaliveProgram, static_cast<std::uint32_t>(KeepaliveProc::pong),
                       PacketType::message, 0, PacketStatus::ok));
  }
}

// ---- Write side ----

void Channel::send_packet(const PacketHeader& h, std::span<const std::uint8_t> body) {
  if (closing_) return;
  OutItem item;
  item.owned = make_packet(h, body);
  item.data = item.owned.data();
  item.len = item.owned.size();
  control_bytes_ += item.len;
  out_.push_back(std::move(item));
  if (control_bytes_ > kMaxControlBytes) {
    fail("peer is not reading: too many control packets queued");
    return;
  }
  arm_write();
}

void Channel::send_stream_error(std::uint32_t serial, const RemoteError& e) {
  std::vector<std::uint8_t> body;
  encode_remote_error(body, e);
  send_packet(header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                     PacketType::stream, serial, PacketStatus::error),
              body);
}

void Channel::send_buffer(Stream& s, int index, const std::uint8_t* data, std::size_t len) {
  if (closing_) {
    s.forget_queued_buffers();
    return;
  }
  OutItem item;
  item.data = data;
  item.len = len;
  item.stream = &s;
  item.index = index;
  out_.push_back(std::move(item));
  arm_write();
}

void Channel::send_pipe(Stream& s, const PacketHeader& h, int pipe, std::size_t len) {
  if (closing_) {
    s.forget_queued_buffers();
    return;
  }
  OutItem item;
  write_prefix(item.prefix.data(), h, len);
  item.len = kPrefixSize + len;
  item.stream = &s;
  item.pipe = pipe;
  out_.push_back(std::move(item));
  out_.back().data = out_.back().prefix.data();  // deque elements stay where they are
  arm_write();
}

void Channel::arm_write() {
  // Sending retires items, whose streams may queue more and call back here: the outer call
  // goes on with them.
  if (writing_) return;
  writing_ = true;
  write_now();
  writing_ = false;
}

void Channel::write_now() {
  if (closing_ || write_op_.busy()) return;
  // A payload waiting in a stream's pipe goes out by a non-blocking splice right after its
  // header (io_uring would run the splice on a worker thread).
  while (!out_.empty() && out_.front().pipe >= 0) {
    const OutItem& item = out_.front();
    const bool more = out_.size() > 1;
    ssize_t n = 0;
    if (out_sent_ < kPrefixSize) {
      n = ::send(socket_.get(), item.prefix.data() + out_sent_, kPrefixSize - out_sent_,
                 MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE);
    } else {
      n = ::splice(item.pipe, nullptr, socket_.get(), nullptr, item.len - out_sent_,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (more ? SPLICE_F_MORE : 0));
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      write_polling_ = true;
      io_uring_sqe* sqe = ring_.prepare(write_op_);
      io_uring_prep_poll_add(sqe, socket_.get(), POLLOUT);
      return;
    }
    if (n <= 0) {
      fail(fmt::format("send failed: {}", n == 0 ? "no progress" : std::strerror(errno)));
      return;
    }
    wrote(static_cast<std::size_t>(n));
    if (closing_) return;
  }
  if (out_.empty()) return;
  // Everything up to the next pipe payload (its header included) in one sendmsg.
  iov_items_ = 0;
  for (std::size_t i = 0; i < out_.size() && iov_items_ < kMaxIov; ++i) {
    const std::size_t skip = i == 0 ? out_sent_ : 0;
    const bool piped = out_[i].pipe >= 0;
    iov_[iov_items_].iov_base = const_cast<std::uint8_t*>(out_[i].data + skip);
    iov_[iov_items_].iov_len = (piped ? kPrefixSize : out_[i].len) - skip;
    ++iov_items_;
    if (piped) break;
  }
  msg_ = msghdr{};
  msg_.msg_iov = iov_.data();
  msg_.msg_iovlen = iov_items_;
  io_uring_sqe* sqe = ring_.prepare(write_op_);
  io_uring_prep_sendmsg(sqe, socket_.get(), &msg_, MSG_NOSIGNAL);
}

void Channel::on_write(int res) {
  if (closing_) {
    maybe_finish_close();
    return;
  }
  if (std::exchange(write_polling_, false)) {
    // The socket has room again (res is the poll mask).
    if (res < 0) {
      fail(fmt::format("send failed: {}", std::strerror(-res)));
      return;
    }
    arm_write();
    return;
  }
  if (res == -EAGAIN) res = 0;  // io_uring waits for room, so this is not expected; retry
  if (res < 0) {
    fail(fmt::format("send failed: {}", std::strerror(-res)));
    return;
  }
  wrote(static_cast<std::size_t>(res));
  arm_write();
}

// n more bytes of the write queue are on the socket: retire the items they complete.
void Channel::wrote(std::size_t n) {
  while (!out_.empty() && n > 0) {
    OutItem& item = out_.front();
    const std::size_t take = std::min(n, item.len - out_sent_);
    out_sent_ += take;
    n -= take;
    if (out_sent_ < item.len) break;
    out_sent_ = 0;
    Stream* s = item.stream;
    const int index = item.index;
    const std::size_t payload = item.len - kPrefixSize;
    const bool piped = item.pipe >= 0;
    if (!item.owned.empty()) control_bytes_ -= item.len;
    out_.pop_front();
    if (s && piped) s->on_pipe_sent(payload);
    if (s && !piped) s->on_buffer_sent(index);
  }
}

// ---- Teardown ----

void Channel::fail(const std::string& reason) {
  if (closing_) return;
  spdlog::warn("{}: {}", peer_, reason);
  close(reason);
}

void Channel::close(const std::string& reason) {
  if (closing_) return;
  closing_ = true;
  close_reason_ = reason;
  handshake_timer_.cancel();
  keepalive_timer_.cancel();
  // Buffers in the write queue will never be sent: hand them back before aborting the streams.
  for (auto& item : out_) {
    if (item.stream) item.stream->forget_queued_buffers();
  }
  out_.clear();
  control_bytes_ = 0;
  std::vector<Stream*> open;
  for (auto& [serial, s] : streams_) open.push_back(s.get());
  for (Stream* s : open) s->abort(ErrorCode::shutdown, "channel closed: " + reason, false);
  // Calls still waiting for a reply fail now, each with the reason.
  auto pending = std::move(pending_calls_);
  pending_calls_.clear();
  for (auto& [serial, handler] : pending) {
    std::vector<std::uint8_t> err;
    encode_remote_error(err, make_error(ErrorCode::shutdown, "channel closed: " + reason));
    handler(header(kProgram, 0, PacketType::reply, serial, PacketStatus::error), err);
  }
  ::shutdown(socket_.get(), SHUT_RDWR);
  ring_.cancel(read_op_);
  ring_.cancel(write_op_);
  maybe_finish_close();
}

void Channel::abort_streams(const std::string& reason) {
  std::vector<Stream*> open;
  for (auto& [serial, s] : streams_) open.push_back(s.get());
  for (Stream* s : open) s->abort(ErrorCode::shutdown, reason, true);
}

void Channel::defer(std::function<void()> f) {
  std::weak_ptr<bool> alive = alive_;
  boost::asio::post(io_, [alive, f = std::move(f)] {
    if (!alive.expired()) f();
  });
}

void Channel::release(Stream& s) {
  // The read may be waiting for room in this stream's pipe, which will not drain any more.
  if (config_.splice && step_ == ReadStep::splice && splice_stream_ == &s && read_op_.busy()) {
    ring_.cancel(read_op_);
  }
  auto it = streams_.find(s.serial());
  if (it != streams_.end() && it->second.get() == &s) {
    released_.push_back(std::move(it->second));
    streams_.erase(it);
  }
  if (!reap_scheduled_) {
    reap_scheduled_ = true;
    defer([this] { reap(); });
  }
}

void Channel::reap() {
  reap_scheduled_ = false;
  std::erase_if(released_, [](const std::unique_ptr<Stream>& s) { return s->idle(); });
  if (closing_) maybe_finish_close();
}

void Channel::maybe_finish_close() {
  if (!closing_ || close_reported_) return;
  if (read_op_.busy() || write_op_.busy() || !streams_.empty()) return;
  if (std::any_of(released_.begin(), released_.end(),
                  [](const std::unique_ptr<Stream>& s) { return !s->idle(); })) {
    return;
  }
  close_reported_ = true;
  socket_.reset();
  defer([this] {
    released_.clear();
    // The callback may destroy this channel: keep it and the reason off the channel first.
    auto on_closed = std::move(events_.on_closed);
    const std::string reason = close_reason_;
    if (on_closed) on_closed(*this, reason);
  });
}

}  // namespace nbdtunnel::tunnel
