#pragma once
// One tunnelled connection: a local socket on this host, carried as STREAM packets on a channel.
// Each direction is flow-controlled by credits: we send at most as many payload bytes as the
// peer granted, and grant credit back as our receive window drains into the local socket.
// A stream talks to its channel only through StreamLink.

#include <sys/un.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tunnel/protocol.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/stream_link.hpp"
#include "tunnel/tx_lease.hpp"
#include "tunnel/tx_ring.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

// The largest receive window, at most `window`, for which a splice stream gets a pipe of twice
// the window (payload pages may arrive partly filled). Unprivileged processes cannot grow pipes
// past fs.pipe-max-size (1 MiB by default), so this is often less than asked for.
std::uint32_t splice_window_limit(std::uint32_t window);

// How a stream moves its bytes; the channel sets it for all of its streams.
struct StreamParams {
  std::uint32_t window = 0;  // our receive window to begin with
  // How far our receive window may grow on a long link (at most; 0 or less than window: it does
  // not grow), and how far our transmit memory may grow for a peer whose window grows.
  std::uint32_t max_window = 0;
  std::uint32_t chunk = 0;  // payload bytes per packet we send
  // Peer → local by splice (socket → pipe → socket, no copy through user space) instead of
  // through a user-space ring; only when the channel's transport can splice.
  bool splice = false;
  // Local → peer by splice too. Not on a resumable channel: what was sent must be kept until the
  // peer acknowledges it, and a pipe gives its bytes up as they leave.
  bool splice_tx = false;
  // Copy mode: transmit memory beyond the peer's window, for bytes that wait for the channel's
  // acknowledgement (resumable channels), to begin with and at most (the ring grows when
  // acknowledgements come less often than its first size allows for).
  std::size_t tx_slack = 0;
  std::size_t tx_max_slack = 0;
};

class Stream final : private TxOwner {
 public:
  enum class State { opening, open, closed };

  Stream(StreamLink& link, std::uint32_t serial, std::string target, std::string tag,
         unique_fd local, const StreamParams& params);
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  std::uint32_t serial() const { return serial_; }
  const std::string& target() const { return target_; }
  const std::string& tag() const { return tag_; }
  State state() const { return state_; }
  std::uint64_t bytes_sent() const { return bytes_to_peer_; }
  std::uint64_t bytes_received() const { return bytes_from_peer_; }

  // Responder: connect the local socket to path; StreamLink::connected reports the outcome.
  void connect(const std::string& path);
  // Both sides: the stream is open; start moving bytes. credit is the peer's window.
  void start(std::uint32_t credit);
  // A STREAM packet for this stream arrived.
  void on_packet(std::uint32_t status, std::span<const std::uint8_t> body);
  // A STREAM_CREDIT message for this stream arrived.
  void on_credit(std::uint32_t bytes);
  // Splice receive path: the pipe a payload of n bytes may be spliced into now, or -1.
  int splice_pipe(std::size_t n) const;
  // The pipe the rest of a payload that splice_pipe admitted goes to (-1 once closed). It fits:
  // the pipe has only drained since.
  int splice_pipe_rest() const { return state_ == State::open ? pipe_w_.get() : -1; }
  // The channel spliced n payload bytes into that pipe.
  void on_spliced(std::size_t n);
  // Ends the stream at once. If notify_peer, an ERROR packet tells the peer why.
  void abort(ErrorCode code, const std::string& reason, bool notify_peer);
  // True when no operation, posted work or lent buffer of this stream is outstanding.
  bool idle() const;

 private:
  // The handler for a completion on the local socket: a closed stream only reports it (to be
  // reaped), an error aborts the stream ("<what> failed: ..."), anything else goes to next.
  Op::Handler completion(const char* what, void (Stream::*next)(int res));
  void buffer_returned(std::uint32_t id) override;
  void pipe_returned(std::size_t n) override;

  // Local → peer.
  void arm_recv();
  void on_recv(int res);
  void fill_pipe();
  void on_readable(int res);
  void local_ended();
  // Peer → local.
  void arm_send();
  void drain_pipe();
  void on_send_done(int res);
  void accept_payload(std::span<const std::uint8_t> body);
  // A non-blocking send to the local socket; returns what it took (0 when full or failed).
  std::size_t send_now(std::span<const std::uint8_t> bytes);
  void arrived(std::size_t n);
  void delivered(std::size_t n);
  void grant_credit();
  std::size_t grow_window();
  void closed();

  void on_connect(int res);
  void maybe_finish();
  void close_local();
  bool tx_idle() const;
  std::string describe() const;

  StreamLink& link_;
  TrafficCounters* const counters_;  // link_.counters(): may be null
  const std::uint32_t serial_;
  const std::string target_;
  const std::string tag_;
  unique_fd local_;
  State state_ = State::opening;
  std::uint64_t bytes_to_peer_ = 0;
  std::uint64_t bytes_from_peer_ = 0;

  // Local → peer: a ring of records (copy; sized when the peer's window is known), or a pipe
  // holding up to two chunks (splice).
  std::uint32_t chunk_;
  std::size_t tx_slack_;
  std::size_t tx_max_slack_;
  std::unique_ptr<TxRing> tx_;
  std::uint8_t* receiving_ = nullptr;  // the record a recv in flight fills
  std::size_t recv_reserved_ = 0;
  std::uint64_t tx_credit_ = 0;
  bool local_eof_ = false;
  unique_fd tx_pipe_r_, tx_pipe_w_;
  std::size_t tx_piped_ = 0;  // bytes in the transmit pipe, lent to the write queue
  Op recv_op_;

  // Peer → local: a pipe holding up to pipe_window_ bytes (splice), and a ring of window bytes
  // (copy mode; in splice mode only once the window has grown past what the pipe holds: what
  // does not fit the pipe, and everything after it until the ring is empty again, so that the
  // bytes leave in order: first the pipe's, then the ring's).
  std::size_t window_;                  // our receive window now
  const std::size_t initial_window_;    // the window HELLO announced (the peer's first credit)
  const std::size_t max_window_;        // how far window_ may grow
  std::size_t pipe_window_ = 0;         // what the pipe may hold (0: no pipe)
  std::unique_ptr<std::uint8_t[]> rx_;  // max_window_ bytes, taken on first use, touched as used
  unique_fd pipe_r_, pipe_w_;
  bool drain_posted_ = false;
  bool sending_ring_ = false;  // send_op_ is a send from the ring (else a wait for POLLOUT)
  std::size_t piped_ = 0;      // bytes in the pipe
  std::size_t rx_head_ = 0;
  std::size_t rx_used_ = 0;  // bytes in the ring
  std::uint64_t credit_owed_ = 0;
  bool remote_eof_ = false;
  bool local_shut_wr_ = false;
  Op send_op_;

  // Window growth (see grow_window): the credit granted and the bytes arrived so far, one
  // probe of the credit loop's round trip, and the bytes that arrived in the last round trip.
  std::uint64_t granted_ = 0;
  std::uint64_t arrived_ = 0;
  std::chrono::steady_clock::duration rtt_ = std::chrono::steady_clock::duration::max();
  bool probing_ = false;
  std::uint64_t probe_offset_ = 0;  // the first byte that needed the probed grant
  std::chrono::steady_clock::time_point probe_sent_{};
  std::chrono::steady_clock::time_point epoch_start_{};
  std::uint64_t epoch_arrived_ = 0;
  std::size_t wanted_window_ = 0;
  double rate_at_growth_ = 0;  // bytes per second in the round trip that last grew the window
  int flat_round_trips_ = 0;   // round trips since then that did not pay it off
  bool growth_done_ = false;

  // Opening and closing.
  sockaddr_un connect_addr_{};
  Op connect_op_;
  bool finish_sent_ = false;
  bool finish_received_ = false;
};

}  // namespace nbdtunnel::tunnel
