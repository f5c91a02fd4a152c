#include "tunnel/stream.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel {

std::uint32_t splice_window_limit(std::uint32_t window) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return window;
  const unique_fd r(fds[0]), w(fds[1]);
  for (std::uint64_t size = 2ull * window; size >= 2 * kMinWindow; size /= 2) {
    const int got = ::fcntl(w.get(), F_SETPIPE_SZ, static_cast<int>(size));
    if (got > 0) return std::min<std::uint32_t>(window, static_cast<std::uint32_t>(got / 2));
  }
  return window;  // no pipe can grow at all: each stream falls back to copying
}

namespace {
// A pipe of at least `size` bytes, or two invalid fds if the kernel refuses that size.
void make_pipe(unique_fd& r, unique_fd& w, std::size_t size) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return;
  r.reset(fds[0]);
  w.reset(fds[1]);
  if (::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(size)) < static_cast<int>(size)) {
    r.reset();
    w.reset();
  }
}

}  // namespace

Stream::Stream(StreamLink& link, std::uint32_t serial, std::string target, std::string tag,
               unique_fd local, const StreamParams& params)
    : link_(link),
      counters_(link.counters()),
      serial_(serial),
      target_(std::move(target)),
      tag_(std::move(tag)),
      local_(std::move(local)),
      chunk_(params.chunk),
      tx_slack_(params.tx_slack),
      tx_max_slack_(std::max(params.tx_slack, params.tx_max_slack)),
      window_(params.window),
      initial_window_(params.window),
      max_window_(std::max(params.window, params.max_window)),
      granted_(params.window) {
  if (params.splice) {
    // Room for the whole window even if pages arrive partly filled: twice the window.
    make_pipe(pipe_r_, pipe_w_, 2 * window_);
    if (!pipe_r_) spdlog::debug("stream {}: receive pipe refused; receiving by copy", serial_);
    if (pipe_r_) pipe_window_ = window_;
  }
  // Local → peer by splice too (socket → pipe → channel): two chunks fit the pipe, with room.
  if (pipe_r_ && params.splice_tx) {
    make_pipe(tx_pipe_r_, tx_pipe_w_, 4 * chunk_);
    if (!tx_pipe_r_) spdlog::debug("stream {}: transmit pipe refused; sending by copy", serial_);
  }
  if (!tx_pipe_r_) {
    recv_op_.set_handler([this, next = completion("reading the local socket", &Stream::on_recv)](
                             int res, std::uint32_t flags) {
      // The credit reserved for this recv comes back first, whatever happened; so does the ring
      // space unless bytes came in.
      const std::size_t got = res > 0 ? static_cast<std::size_t>(res) : 0;
      tx_credit_ += recv_reserved_ - got;
      recv_reserved_ = 0;
      if (got == 0) tx_->cancel();
      next(res, flags);
    });
  } else {
    recv_op_.set_handler(completion("waiting to read the local socket", &Stream::on_readable));
  }
  send_op_.set_handler(completion("writing the local socket", &Stream::on_send_done));
  connect_op_.set_handler([this](int res, std::uint32_t) { on_connect(res); });
}

Op::Handler Stream::completion(const char* what, void (Stream::*next)(int res)) {
  return [this, what, next](int res, std::uint32_t) {
    if (state_ == State::closed) {
      link_.done(serial_);
      return;
    }
    if (res < 0 && res != -EAGAIN) {
      abort(ErrorCode::stream_io, fmt::format("{} failed: {}", what, std::strerror(-res)), true);
      return;
    }
    (this->*next)(res);
  };
}

std::string Stream::describe() const {
  return fmt::format("stream {} ({})", serial_, tag_);
}

void Stream::connect(const std::string& path) {
  local_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!local_) {
    link_.connected(serial_, system_error(errno, "connect failed"));
    return;
  }
  connect_addr_.sun_family = AF_UNIX;
  std::memcpy(connect_addr_.sun_path, path.c_str(),
              std::min(path.size() + 1, sizeof connect_addr_.sun_path));
  connect_addr_.sun_path[sizeof connect_addr_.sun_path - 1] = '\0';
  io_uring_prep_connect(link_.ring().prepare(connect_op_), local_.get(),
                        reinterpret_cast<const sockaddr*>(&connect_addr_), sizeof connect_addr_);
}

void Stream::on_connect(int res) {
  if (state_ == State::closed) {
    link_.done(serial_);
    return;
  }
  link_.connected(serial_, res < 0 ? Status(system_error(-res, "connect failed")) : Status());
}

void Stream::start(std::uint32_t credit) {
  state_ = State::open;
  if (counters_) TrafficCounters::add(counters_->streams_opened);
  // The pipes drain and fill by plain splice calls, which must not block.
  if (pipe_r_ || tx_pipe_r_) set_nonblocking(local_.get());
  tx_credit_ = credit;
  // The peer's window in flight, what waits for acknowledgement, and two records' worth that
  // cannot wrap; up to a grown window and the most that may wait for acknowledgement.
  if (!tx_pipe_r_) {
    const std::size_t records = 2 * (kPrefixSize + chunk_);
    tx_ = std::make_unique<TxRing>(
        credit + tx_slack_ + records,
        std::max<std::size_t>(credit, max_window_) + tx_max_slack_ + records);
  }
  arm_recv();
}

// ---- Local → peer ----

void Stream::arm_recv() {
  if (state_ != State::open || local_eof_ || recv_op_.busy() || tx_credit_ == 0) return;
  if (tx_pipe_r_) {
    fill_pipe();
    return;
  }
  // A packet of at least a page (or of all the credit there is), as large as a chunk.
  const std::size_t len = std::min<std::uint64_t>(chunk_, tx_credit_);
  const std::size_t least = std::min<std::size_t>(len, 4096);
  std::span<std::uint8_t> room = tx_->reserve(kPrefixSize + len, kPrefixSize + least);
  if (room.empty() && tx_->capacity() < tx_->max_capacity()) {
    // Full while there is credit: the peer has grown its window past what the ring was sized
    // for, or acknowledgements come less often. Grow it by the credit held.
    tx_->grow(tx_->capacity() + tx_credit_);
    room = tx_->reserve(kPrefixSize + len, kPrefixSize + least);
  }
  if (room.empty()) return;  // the ring is full: a record coming back calls here again
  const std::size_t take = room.size() - kPrefixSize;
  tx_credit_ -= take;
  recv_reserved_ = take;
  receiving_ = room.data();
  io_uring_prep_recv(link_.ring().prepare(recv_op_), local_.get(), room.data() + kPrefixSize, take,
                     0);
}

void Stream::on_recv(int res) {
  if (res == -EAGAIN) {  // io_uring waits for readiness, so this is not expected; retry
    arm_recv();
    return;
  }
  if (res == 0) {
    local_ended();
    return;
  }
  const auto got = static_cast<std::size_t>(res);
  bytes_to_peer_ += got;
  if (counters_) TrafficCounters::add(counters_->bytes_sent, got);
  const std::uint32_t id = tx_->commit(kPrefixSize + got);  // lent to the write queue
  write_prefix(receiving_, stream_header(serial_, PacketStatus::cont), got);
  link_.send_payload(BufferLease(*this, id, std::span(receiving_, kPrefixSize + got)));
  arm_recv();
}

// Splice path: moves what the local socket holds into the transmit pipe, up to two chunks and
// never more than the credit, and queues a packet for each piece.
void Stream::fill_pipe() {
  while (state_ == State::open && !local_eof_ && tx_credit_ > 0 && tx_piped_ < 2 * chunk_) {
    const std::size_t len = std::min<std::uint64_t>(chunk_, tx_credit_);
    const ssize_t n = ::splice(local_.get(), nullptr, tx_pipe_w_.get(), nullptr, len,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // An empty pipe means the socket is empty: wait for it. Otherwise the pipe may be full;
      // the write queue returning its leases calls back here.
      if (tx_piped_ == 0) {
        io_uring_prep_poll_add(link_.ring().prepare(recv_op_), local_.get(), POLLIN);
      }
      return;
    }
    if (n < 0) {
      abort(ErrorCode::stream_io,
            fmt::format("reading the local socket failed: {}", std::strerror(errno)), true);
      return;
    }
    if (n == 0) {
      local_ended();
      return;
    }
    const auto got = static_cast<std::size_t>(n);
    tx_credit_ -= got;
    tx_piped_ += got;
    bytes_to_peer_ += got;
    if (counters_) TrafficCounters::add(counters_->bytes_sent, got);
    PipeLease lease(*this, tx_pipe_r_.get(), got);
    write_prefix(lease.prefix().data(), stream_header(serial_, PacketStatus::cont), got);
    link_.send_payload(std::move(lease));
  }
}

void Stream::on_readable(int) {
  fill_pipe();
}

// End of data in this direction: an empty CONTINUE, queued after every data packet.
void Stream::local_ended() {
  local_eof_ = true;
  link_.send_end_of_data(serial_);
  maybe_finish();
}

void Stream::buffer_returned(std::uint32_t id) {
  tx_->release(id);
  if (state_ == State::closed) {
    link_.done(serial_);
    return;
  }
  arm_recv();
  maybe_finish();
}

void Stream::pipe_returned(std::size_t n) {
  tx_piped_ -= n;
  if (state_ == State::closed) {
    link_.done(serial_);
    return;
  }
  arm_recv();
  maybe_finish();
}

void Stream::on_credit(std::uint32_t bytes) {
  if (state_ != State::open) return;
  if (tx_credit_ == 0 && !local_eof_ && counters_) TrafficCounters::add(counters_->credit_stalls);
  tx_credit_ += bytes;
  arm_recv();
}

// ---- Peer → local ----

void Stream::on_packet(std::uint32_t status, std::span<const std::uint8_t> body) {
  if (state_ != State::open) {
    if (state_ == State::opening) {
      abort(ErrorCode::protocol, "stream data arrived before the stream was open", true);
    }
    return;
  }
  switch (static_cast<PacketStatus>(status)) {
    case PacketStatus::cont:
      if (body.empty()) {
        remote_eof_ = true;
        arm_send();
        return;
      }
      accept_payload(body);
      return;
    case PacketStatus::ok:
      if (!body.empty()) {
        abort(ErrorCode::protocol, "stream finish packet carries a body", true);
        return;
      }
      finish_received_ = true;
      maybe_finish();
      return;
    case PacketStatus::error: {
      Result<RemoteError> e = decode_remote_error(body);
      const std::string why = e ? e->message.value_or("no message") : e.error().message;
      abort(ErrorCode::stream_io, fmt::format("peer aborted the stream: {}", why), false);
      return;
    }
  }
}

// A payload that arrived as bytes (copy mode, or one the channel could not splice): into the
// pipe while it has room and the ring is empty, else into the ring.
void Stream::accept_payload(std::span<const std::uint8_t> body) {
  if (remote_eof_) {
    abort(ErrorCode::protocol, "peer sent data after its end-of-data", true);
    return;
  }
  const std::size_t held = piped_ + rx_used_;
  if (body.size() > window_ - held) {
    abort(ErrorCode::limit,
          fmt::format("peer sent {} bytes with only {} bytes of window left", body.size(),
                      window_ - held),
          true);
    return;
  }
  arrived(body.size());
  if (pipe_w_ && rx_used_ == 0 && piped_ + body.size() <= pipe_window_) {
    const ssize_t n = ::write(pipe_w_.get(), body.data(), body.size());
    if (n != static_cast<ssize_t>(body.size())) {
      abort(ErrorCode::stream_io, "writing the stream pipe failed", true);
      return;
    }
    piped_ += body.size();
  } else {
    // Nothing waits before it: straight from the channel's buffer to the local socket, which
    // takes it all while its reader keeps up. What it does not take waits in the ring.
    if (piped_ == 0 && rx_used_ == 0 && state_ == State::open && !send_op_.busy()) {
      body = body.subspan(send_now(body));
      if (state_ != State::open || body.empty()) return;
    }
    // Copy into the ring, in at most two pieces.
    if (!rx_) rx_.reset(new std::uint8_t[max_window_]);  // not zeroed: touched as used
    const std::size_t tail = (rx_head_ + rx_used_) % window_;
    const std::size_t first = std::min(body.size(), window_ - tail);
    std::memcpy(rx_.get() + tail, body.data(), first);
    std::memcpy(rx_.get(), body.data() + first, body.size() - first);
    rx_used_ += body.size();
  }
  arm_send();
}

std::size_t Stream::send_now(std::span<const std::uint8_t> bytes) {
  ssize_t n;
  do {
    n = ::send(local_.get(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
    abort(ErrorCode::stream_io,
          fmt::format("writing the local socket failed: {}", std::strerror(errno)), true);
    return 0;
  }
  if (n <= 0) return 0;
  delivered(static_cast<std::size_t>(n));
  return static_cast<std::size_t>(n);
}

int Stream::splice_pipe(std::size_t n) const {
  const bool ok = pipe_w_ && state_ == State::open && !remote_eof_ && rx_used_ == 0 &&
                  piped_ + n <= pipe_window_ && piped_ + n <= window_;
  return ok ? pipe_w_.get() : -1;
}

void Stream::on_spliced(std::size_t n) {
  piped_ += n;
  arrived(n);
  // Drain once the channel has read what the socket holds, so that several payloads reach the
  // local socket in one splice (and wake its reader once); at half a pipe, drain now.
  if (piped_ >= pipe_window_ / 2) {
    arm_send();
    return;
  }
  if (drain_posted_) return;
  drain_posted_ = true;
  link_.poster().post([this] {
    drain_posted_ = false;
    if (state_ == State::closed) {
      link_.done(serial_);
      return;
    }
    arm_send();
  });
}

void Stream::arm_send() {
  if (state_ != State::open || send_op_.busy()) return;
  if (piped_ > 0) {
    drain_pipe();
    return;
  }
  if (rx_used_ > 0) {
    const std::size_t sending = std::min(rx_used_, window_ - rx_head_);
    sending_ring_ = true;
    io_uring_prep_send(link_.ring().prepare(send_op_), local_.get(), rx_.get() + rx_head_, sending,
                       MSG_NOSIGNAL);
    return;
  }
  if (remote_eof_ && !local_shut_wr_) {
    // Everything the peer sent is delivered: pass its end-of-data on (NBD disconnect, EOF).
    ::shutdown(local_.get(), SHUT_WR);
    local_shut_wr_ = true;
    maybe_finish();
  }
}

// Splice path: moves the pipe into the local socket now; when the socket is full, waits for it
// to become writable. Then the ring, if it holds bytes.
void Stream::drain_pipe() {
  while (piped_ > 0 && state_ == State::open) {
    const ssize_t n = ::splice(pipe_r_.get(), nullptr, local_.get(), nullptr, piped_,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      io_uring_prep_poll_add(link_.ring().prepare(send_op_), local_.get(), POLLOUT);
      return;
    }
    if (n <= 0) {
      abort(ErrorCode::stream_io,
            fmt::format("writing the local socket failed: {}",
                        n == 0 ? "no progress" : std::strerror(errno)),
            true);
      return;
    }
    piped_ -= static_cast<std::size_t>(n);
    delivered(static_cast<std::size_t>(n));
  }
  arm_send();
}

void Stream::on_send_done(int res) {
  if (!sending_ring_) {  // the local socket is writable again
    arm_send();
    return;
  }
  sending_ring_ = false;
  if (res == -EAGAIN) {  // io_uring waits for readiness, so this is not expected; retry
    arm_send();
    return;
  }
  const auto sent = static_cast<std::size_t>(res);
  rx_used_ -= sent;
  rx_head_ = rx_used_ == 0 ? 0 : (rx_head_ + sent) % window_;
  delivered(sent);
  arm_send();
}

void Stream::delivered(std::size_t n) {
  bytes_from_peer_ += n;
  if (counters_) TrafficCounters::add(counters_->bytes_received, n);
  credit_owed_ += n;
  grant_credit();
}

// Window growth, as TCP's receive autotuning does it: count what arrives per round trip of the
// credit loop; when the peer sends more than half the window in one, the window may be what
// limits the stream, and the window doubles (up to max_window_ and what the channel's budget
// has left). The round trip is measured, not configured: from a grant to the arrival of the
// first byte only that grant allowed, the shortest seen. Links shorter than kLongLink never
// grow: there a window is refilled long before it drains.
// A round trip also grows when the window only fills queues (many streams on a busy host, a
// slow disk): then a larger window brings no more bytes per second. So, as BBR leaves its
// start-up, the window grows again only once the last growth has paid off (a quarter more
// bytes per second), and never again after kFlatRoundTrips round trips that did not.
namespace {
constexpr std::chrono::steady_clock::duration kLongLink = std::chrono::milliseconds(1);
constexpr double kPaidOff = 1.25;
constexpr int kFlatRoundTrips = 3;
}  // namespace

void Stream::arrived(std::size_t n) {
  arrived_ += n;
  if (window_ >= max_window_ || growth_done_) return;
  const auto now = std::chrono::steady_clock::now();
  if (probing_ && arrived_ > probe_offset_) {
    probing_ = false;
    rtt_ = std::min(rtt_, now - probe_sent_);
  }
  if (rtt_ < kLongLink || rtt_ == std::chrono::steady_clock::duration::max()) return;
  if (epoch_start_ == std::chrono::steady_clock::time_point{}) {  // the first round trip known
    epoch_start_ = now;
    epoch_arrived_ = arrived_;
    return;
  }
  if (now - epoch_start_ < rtt_) return;
  const std::uint64_t bytes = arrived_ - epoch_arrived_;
  const double rate =
      static_cast<double>(bytes) / std::chrono::duration<double>(now - epoch_start_).count();
  const bool paid_off = rate_at_growth_ == 0 || rate >= kPaidOff * rate_at_growth_;
  if (2 * bytes > window_ && paid_off) {
    wanted_window_ = std::min(max_window_, 2 * window_);
    rate_at_growth_ = rate;
    flat_round_trips_ = 0;
  } else if (rate_at_growth_ > 0 && ++flat_round_trips_ >= kFlatRoundTrips) {
    growth_done_ = true;
    spdlog::debug("{}: receive window stays at {} KiB", describe(), window_ >> 10);
  }
  epoch_start_ = now;
  epoch_arrived_ = arrived_;
}

std::size_t Stream::grow_window() {
  if (wanted_window_ <= window_) return 0;
  // The ring keeps its bytes at [head, head + used) modulo the window: it can take a new size
  // only while they do not wrap.
  if (rx_used_ > 0 && rx_head_ + rx_used_ > window_) return 0;
  const std::size_t extra = link_.take_window(wanted_window_ - window_);
  window_ += extra;
  if (extra > 0) {
    spdlog::debug("{}: receive window {} KiB (round trip {:.1f} ms)", describe(), window_ >> 10,
                  std::chrono::duration<double, std::milli>(rtt_).count());
  }
  return extra;
}

void Stream::grant_credit() {
  // Batch credit: one message per half window delivered. The peer never waits on less: when it
  // runs out, a whole window is in flight or delivered, so half of it comes back.
  if (credit_owed_ < window_ / 2 || remote_eof_) return;
  const std::uint64_t grant = credit_owed_ + grow_window();
  if (!probing_ && window_ < max_window_) {
    probing_ = true;
    probe_offset_ = granted_;
    probe_sent_ = std::chrono::steady_clock::now();
  }
  granted_ += grant;
  link_.grant_credit(serial_, static_cast<std::uint32_t>(grant));
  credit_owed_ = 0;
}

// ---- Opening and closing ----

bool Stream::tx_idle() const {
  return tx_piped_ == 0 && (!tx_ || tx_->empty());
}

void Stream::maybe_finish() {
  if (state_ != State::open) return;
  const bool tx_done = local_eof_ && tx_idle();
  const bool rx_done = remote_eof_ && local_shut_wr_ && !send_op_.busy();
  if (tx_done && rx_done && !finish_sent_) {
    finish_sent_ = true;
    link_.send_finish(serial_);
  }
  if (finish_sent_ && finish_received_) {
    spdlog::debug("{} finished: {} bytes to peer, {} bytes from peer", describe(), bytes_to_peer_,
                  bytes_from_peer_);
    closed();
    if (counters_) TrafficCounters::add(counters_->streams_closed);
    close_local();
    link_.done(serial_);
  }
}

void Stream::abort(ErrorCode code, const std::string& reason, bool notify_peer) {
  if (state_ == State::closed) return;
  const bool was_open = state_ == State::open;
  closed();
  if (was_open && counters_) TrafficCounters::add(counters_->streams_closed);
  if (was_open) spdlog::info("{} to target '{}' closed: {}", describe(), target_, reason);
  if (notify_peer) link_.send_error(serial_, make_error(code, reason));
  close_local();
  link_.done(serial_);
}

void Stream::closed() {
  state_ = State::closed;
  link_.return_window(window_ - initial_window_);
  window_ = initial_window_;
}

void Stream::close_local() {
  // Shutting the socket down completes any recv/send in flight; cancel covers connect.
  if (local_) ::shutdown(local_.get(), SHUT_RDWR);
  link_.ring().cancel(recv_op_);
  link_.ring().cancel(send_op_);
  link_.ring().cancel(connect_op_);
}

bool Stream::idle() const {
  return !recv_op_.busy() && !send_op_.busy() && !connect_op_.busy() && !drain_posted_ && tx_idle();
}

}  // namespace nbdtunnel::tunnel
