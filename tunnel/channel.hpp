#pragma once
// A channel: one connection between the two hosts that carries many streams. The channel itself
// dispatches packets, runs the HELLO exchange and the keepalive, and keeps the calls in flight;
// its parts do the rest: a Transport moves the bytes, a FrameReader reads packets, a WriteQueue
// sends them, a StreamTable holds the streams. CALLs the channel does not serve itself (anything
// but HELLO and OPEN_TUNNEL) go to its owner. All of its work runs on one io_context thread.
// A resumable channel (both sides asked for it in HELLO) outlives its connection: when the
// connection is lost the channel detaches from it, keeps its streams, calls and unacknowledged
// bytes, and waits up to the grace period for a new one (the initiator dials, sends RESUME and
// hands the connection over with resume(); the responder's owner routes an incoming RESUME to
// the channel it names, see ChannelEvents::find_resumable). Then both sides send again what the
// other did not receive, and nothing above the channel notices.

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "tunnel/frame_reader.hpp"
#include "tunnel/poster.hpp"
#include "tunnel/protocol.hpp"
#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/stream_budget.hpp"
#include "tunnel/stream_link.hpp"
#include "tunnel/stream_table.hpp"
#include "tunnel/traffic_counters.hpp"
#include "tunnel/transport.hpp"
#include "tunnel/write_queue.hpp"

namespace nbdtunnel::tunnel {

struct ChannelConfig {
  std::uint32_t window = 2u << 20;  // our receive window per stream, to begin with
  // On a long link (a credit round trip of 1 ms or more) a stream's receive window grows, as
  // far as the link needs, up to max_window (0 or less than window: windows do not grow) and as
  // long as all of the channel's streams together have grown by at most window_budget.
  std::uint32_t max_window = 32u << 20;
  std::size_t window_budget = 64u << 20;
  std::uint32_t chunk = 256u << 10;  // payload bytes per STREAM packet we send
  std::size_t max_streams = 256;     // concurrent streams we accept
  // Responder: the daemon-wide stream limit this channel draws from (none: no daemon limit).
  std::shared_ptr<StreamBudget> stream_budget;
  // Responder: calls handed to the owner (ChannelEvents::on_call) and not yet answered.
  std::size_t max_pending_calls = 16;
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds keepalive_interval{5'000};
  unsigned keepalive_count = 6;  // intervals of silence before the peer is declared dead
  // A channel with no stream and no call in progress for this long is closed (0: never).
  std::chrono::milliseconds idle_timeout{0};
  std::string host_id;   // sent in HELLO
  std::string hostname;  // sent in HELLO
  // true = splice (the default, as `--copy-mode` is): payloads move socket → pipe → socket in
  // the kernel in both directions, when the transport can splice. false = copy: recv into
  // buffers, copy each payload into its stream's window, send from it.
  bool splice = true;
  // Where the streams' traffic is counted (none: nowhere); shared by a daemon's channels.
  std::shared_ptr<TrafficCounters> counters;
  // Responder: how long a channel whose connection was lost waits for its initiator to resume
  // it (0: channels are not resumable). Initiator: nonzero asks for a resumable channel; the
  // responder's grace period applies.
  std::chrono::milliseconds resume_timeout{0};
};

// Channel bytes received between two ACKs on a resumable channel: 1 MiB with one or two
// streams, less with more (2 MiB shared among them), down to 256 KiB. What the sender keeps per
// stream follows: a ring sized for 256 KiB grows when ACKs come less often. Every 256 KiB woke
// a lone stream's sender four times per credit (W1 copy mode 0.56x direct against 0.79x at
// 1 MiB, one run); 1 MiB for 16 streams kept 25 MiB more (W5, 16 disks: 82 against 57 MiB).
inline constexpr std::size_t kMinAckInterval = 256u << 10;
inline constexpr std::size_t kMaxAckInterval = 1u << 20;
inline constexpr std::size_t kAckShare = 2u << 20;

class Channel;

struct ChannelEvents {
  // Responder: the UNIX socket path for a target name opened on this channel, or an error saying
  // why there is none (naming nothing the peer did not name itself).
  std::function<Result<std::string>(const Channel& channel, const std::string& target)>
      resolve_target;
  // Responder: a CALL the channel does not serve itself. Answer it with Channel::reply /
  // reply_error, now or later (guard with liveness()); without on_call it is refused as unknown.
  std::function<void(Channel& channel, const PacketHeader& call,
                     std::span<const std::uint8_t> body)>
      on_call;
  // The HELLO exchange completed.
  std::function<void(const Hello& peer)> on_ready;
  // The channel is closed and every operation has finished. Called from a posted handler, so the
  // owner may destroy the channel inside it.
  std::function<void(Channel& channel, const std::string& reason)> on_closed;
  // A resumable channel lost its connection and waits (until resume_deadline()) for a new one.
  std::function<void(Channel& channel, const std::string& reason)> on_lost;
  // It has one again, after `outage`.
  std::function<void(Channel& channel, std::chrono::steady_clock::duration outage)> on_resumed;
  // Responder: the channel a RESUME on this (new) connection names, or none. The channel checks
  // the secret itself.
  std::function<Channel*(const ResumeRequest& request)> find_resumable;
};

class Channel final : private StreamLink, private FrameSink {
 public:
  enum class Role { initiator, responder };

  Channel(boost::asio::io_context& io, Ring& ring, std::unique_ptr<Transport> transport, Role role,
          std::string peer, ChannelConfig config, ChannelEvents events);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  void start();
  // Initiator: carry local as a new stream to target. tag names the stream in logs.
  void open_stream(unique_fd local, const std::string& target, const std::string& tag);
  // Initiator: sends a CALL; on_reply gets the REPLY (status OK or ERROR) or, if the channel
  // closes first, a synthesized ERROR.
  using ReplyHandler =
      std::function<void(const PacketHeader& reply, std::span<const std::uint8_t> body)>;
  void call(std::uint32_t procedure, std::span<const std::uint8_t> body, ReplyHandler on_reply);
  // Responder: answers a CALL delivered through ChannelEvents::on_call.
  void reply(const PacketHeader& call, std::span<const std::uint8_t> body = {});
  void reply_error(const PacketHeader& call, ErrorCode code, const std::string& message);
  // Expires when the channel is destroyed: lets asynchronous work check before replying.
  std::weak_ptr<bool> liveness() const { return poster_.liveness(); }
  // Aborts every stream (their local sockets close) but keeps the channel for calls.
  void abort_streams(const std::string& reason);
  // Aborts every stream and closes the transport; on_closed follows once all I/O has finished.
  void close(const std::string& reason);

  // Resumable channels.
  bool resumable() const { return resumable_; }
  // Responder: the id of this channel's resume ticket (its secret stays inside).
  const std::array<std::uint8_t, 16>& resume_id() const { return ticket_.id; }
  // Whether the connection is lost and the channel waits for a new one.
  bool detached() const { return detached_; }
  // Initiator: the RESUME call body for a new connection (send it with ResumeExchange).
  ResumeRequest resume_request() const;
  // Initiator: the new connection, whose RESUME the responder accepted, saying it has received
  // peer_received bytes. The channel goes on over it (or closes, saying why, if it cannot).
  void resume(std::unique_ptr<Transport> transport, std::uint64_t peer_received);
  // Initiator: why the last attempt to resume failed, for the message if none succeeds.
  void note_resume_failure(const std::string& why) { last_resume_failure_ = why; }
  // A detached channel waits at most `most` more (the owner knows its initiator is probably gone).
  void shorten_grace(std::chrono::milliseconds most, const std::string& why);
  // When the grace period of a detached channel ends.
  std::chrono::steady_clock::time_point resume_deadline() const { return resume_deadline_; }
  // How often the connection was lost (and resumed, but for the last loss if detached now).
  unsigned losses() const { return losses_; }
  // Bytes sent again after a resume, in all.
  std::uint64_t bytes_resent() const { return bytes_resent_; }

  bool ready() const { return hello_done_ && !closing_; }
  bool closing() const { return closing_; }
  // Whether HELLO was exchanged, even if the channel has closed since.
  bool hello_done() const { return hello_done_; }
  // The streams in the table now, for reports.
  std::vector<const Stream*> open_streams() const;
  const Hello& peer_hello() const { return peer_hello_; }

 private:
  // Dispatch (FrameSink).
  void on_packet(const PacketHeader& h, std::span<const std::uint8_t> body) override;
  int splice_pipe(std::uint32_t serial, std::size_t n) override;
  int splice_pipe_rest(std::uint32_t serial) override;
  void on_spliced(std::uint32_t serial, std::size_t n) override;
  void on_read_ended(const Status& why) override;
  void on_malformed(const Error& why) override;
  void dispatch(const PacketHeader& h, std::span<const std::uint8_t> body);
  void dispatch_before_hello(const PacketHeader& h, std::span<const std::uint8_t> body);
  static std::string version_mismatch(std::uint32_t version);
  void handle_hello_call(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_hello_reply(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_open(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_open_reply(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_reply(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_stream(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_credit(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_message(const PacketHeader& h, std::span<const std::uint8_t> body);
  StreamParams stream_params() const;
  void handle_resume_call(const PacketHeader& h, std::span<const std::uint8_t> body);
  void reject(const PacketHeader& h, ErrorCode code, const std::string& message);
  Hello local_hello() const;
  Status accept_peer_hello(const Hello& peer);

  // What streams may ask of the channel (StreamLink).
  StreamLink& link() { return *this; }
  Ring& ring() override { return ring_; }
  Poster& poster() override { return poster_; }
  void send_payload(BufferLease lease) override;
  void send_payload(PipeLease lease) override;
  void send_end_of_data(std::uint32_t serial) override;
  void send_finish(std::uint32_t serial) override;
  void send_error(std::uint32_t serial, const RemoteError& e) override;
  void grant_credit(std::uint32_t serial, std::uint32_t bytes) override;
  void connected(std::uint32_t serial, const Status& result) override;
  void done(std::uint32_t serial) override;
  std::size_t take_window(std::size_t bytes) override;
  void return_window(std::size_t bytes) override { window_budget_left_ += bytes; }
  TrafficCounters* counters() override { return config_.counters.get(); }

  void send_packet(const PacketHeader& h, std::span<const std::uint8_t> body = {});
  void arm_keepalive();
  void on_keepalive_tick();
  // Whether a stream or a call is in progress; when not, since when (for idle_timeout).
  bool active() const;
  void note_activity() { last_active_ = std::chrono::steady_clock::now(); }
  void fail(const std::string& reason);
  void maybe_finish_close();

  // Resumption.
  // The connection failed: detach and wait if the channel is resumable, else fail.
  void lost(const std::string& reason);
  void maybe_finish_detach();
  void arm_grace_timer();
  // Responder: whether request carries this channel's ticket.
  bool ticket_matches(const ResumeRequest& request) const;
  // Responder: take over a new connection that asked (with call) to resume this channel.
  void adopt(std::unique_ptr<Transport> transport, std::uint64_t peer_received,
             const PacketHeader& call);
  void attach_pending();
  void maybe_ack();
  void send_ack();
  void send_goodbye(const std::string& reason);
  // Where the channel was when it lost a connection, for the message if it is not resumed.
  std::string not_resumed_reason() const;

  Ring& ring_;
  const Role role_;
  const std::string peer_;
  const ChannelConfig config_;
  ChannelEvents events_;
  std::unique_ptr<Transport> transport_;  // none while detached
  const bool splice_;                     // config_.splice, and the transport can splice
  Poster poster_;
  StreamTable streams_;
  WriteQueue out_;
  FrameReader in_;

  bool hello_done_ = false;
  Hello peer_hello_;
  std::uint32_t hello_serial_ = 0;
  std::map<std::uint32_t, ReplyHandler> pending_calls_;
  std::set<std::uint32_t> served_calls_;    // calls with the owner, not yet answered
  std::set<std::uint32_t> budget_streams_;  // streams holding a place in the stream budget
  std::size_t window_budget_left_;          // what streams' windows may still grow by
  std::chrono::steady_clock::time_point last_active_ = std::chrono::steady_clock::now();

  boost::asio::steady_timer handshake_timer_;
  boost::asio::steady_timer keepalive_timer_;

  bool resumable_ = false;
  ResumeTicket ticket_;  // responder: drawn for this channel; initiator: the responder's
  bool detached_ = false;
  std::string lost_reason_;
  std::string last_resume_failure_;
  std::chrono::steady_clock::time_point lost_at_;
  std::chrono::steady_clock::time_point resume_deadline_;
  boost::asio::steady_timer grace_timer_;
  struct PendingAttach {
    std::unique_ptr<Transport> transport;
    std::uint64_t peer_received = 0;
    std::optional<PacketHeader> resume_call;  // responder: the RESUME to reply to
  };
  std::optional<PendingAttach> pending_attach_;
  std::uint64_t acked_ = 0;  // bytes received that the peer has been told of
  unsigned losses_ = 0;
  std::uint64_t bytes_resent_ = 0;

  bool closing_ = false;
  bool close_reported_ = false;
  std::string close_reason_;
};

}  // namespace nbdtunnel::tunnel
