#pragma once
// A channel: one TCP connection between the two hosts that carries many streams.
// It owns the socket, the stream table, the write queue, the handshake and the keepalive.
// All of its work runs on one io_context thread; bytes move through the Ring.

#include <sys/uio.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tunnel/protocol.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/stream.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

struct ChannelConfig {
  std::uint32_t window = 2u << 20;   // our receive window per stream
  std::uint32_t chunk = 256u << 10;  // payload bytes per STREAM packet we send
  std::size_t max_streams = 256;     // concurrent streams we accept
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds keepalive_interval{5'000};
  unsigned keepalive_count = 6;  // intervals of silence before the peer is declared dead
  std::string host_id;           // sent in HELLO
  std::string hostname;          // sent in HELLO
  // false = copy: recv into buffers, copy each payload into its stream's window, send from it.
  // true = splice: payloads move socket → pipe → socket in the kernel in both directions; the
  // channel reads each header, then splices the payload into its stream's pipe.
  bool splice = false;
};

class Channel;

struct ChannelEvents {
  // Responder: the UNIX socket path for a target name, or nullopt with error filled in.
  std::function<std::optional<std::string>(const std::string& target, std::string& error)>
      resolve_target;
  // Responder: a CALL of a procedure the channel does not handle itself (PREPARE, FINISH).
  // Answer it with Channel::reply / reply_error, now or later (guard with liveness()).
  std::function<void(Channel& channel, const PacketHeader& call,
                     std::span<const std::uint8_t> body)>
      on_call;
  // The HELLO exchange completed.
  std::function<void(const Hello& peer)> on_ready;
  // The channel is closed and every operation has finished. Called from a posted handler, so the
  // owner may destroy the channel inside it.
  std::function<void(Channel& channel, const std::string& reason)> on_closed;
};

class Channel {
 public:
  enum class Role { initiator, responder };

  Channel(boost::asio::io_context& io, Ring& ring, unique_fd socket, Role role, std::string peer,
          ChannelConfig config, ChannelEvents events);
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
  void call(Proc proc, std::span<const std::uint8_t> body, ReplyHandler on_reply);
  // Responder: answers a CALL delivered through ChannelEvents::on_call.
  void reply(const PacketHeader& call, std::span<const std::uint8_t> body = {});
  void reply_error(const PacketHeader& call, ErrorCode code, const std::string& message);
  // Expires when the channel is destroyed: lets asynchronous work check before replying.
  std::weak_ptr<bool> liveness() const { return alive_; }
  // Aborts every stream (their local sockets close) but keeps the channel for calls.
  void abort_streams(const std::string& reason);
  // Aborts every stream and closes the socket; on_closed follows once all I/O has finished.
  void close(const std::string& reason);

  bool ready() const { return hello_done_ && !closing_; }
  bool closing() const { return closing_; }
  const std::string& peer() const { return peer_; }
  const Hello& peer_hello() const { return peer_hello_; }
  std::size_t stream_count() const { return streams_.size(); }

  // Used by Stream.
  Ring& ring() { return ring_; }
  // Runs f on the channel's thread after the work queued so far, unless the channel is gone.
  void defer(std::function<void()> f);
  void send_packet(const PacketHeader& h, std::span<const std::uint8_t> body = {});
  void send_stream_error(std::uint32_t serial, const RemoteError& e);
  void send_buffer(Stream& s, int index, const std::uint8_t* data, std::size_t len);
  // Queues a packet with header h whose len payload bytes wait in the stream's pipe.
  void send_pipe(Stream& s, const PacketHeader& h, int pipe, std::size_t len);
  void stream_connected(Stream& s, int res);
  void release(Stream& s);

 private:
  struct OutItem {
    std::vector<std::uint8_t> owned;  // control packets own their bytes
    const std::uint8_t* data = nullptr;
    std::size_t len = 0;
    Stream* stream = nullptr;  // data packets point into this stream's tx buffer
    int index = -1;
    // Splice mode: data points at prefix, and the payload waits in this pipe.
    int pipe = -1;
    std::array<std::uint8_t, kPrefixSize> prefix{};
  };

  void arm_read();
  void on_read(int res);
  void on_read_spliced(int res);
  void pump_spliced();
  void wait_readable();
  void on_read_ready(int res);
  bool splice_target_gone();
  bool read_ended(int res);
  void on_prefix(const PacketHeader& h);
  void handle(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_hello_call(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_hello_reply(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_open(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_open_reply(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_stream(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_credit(const PacketHeader& h, std::span<const std::uint8_t> body);
  void handle_keepalive(const PacketHeader& h);
  void reject(const PacketHeader& h, ErrorCode code, const std::string& message);
  Hello local_hello() const;
  bool accept_peer_hello(const Hello& peer, std::string& error);
  Stream* find(std::uint32_t serial);

  void arm_write();
  void write_now();
  void on_write(int res);
  void wrote(std::size_t n);
  void start_timers();
  void on_keepalive_tick();
  void fail(const std::string& reason);
  void maybe_finish_close();
  void reap();

  boost::asio::io_context& io_;
  Ring& ring_;
  unique_fd socket_;
  const Role role_;
  const std::string peer_;
  const ChannelConfig config_;
  ChannelEvents events_;

  bool hello_done_ = false;
  Hello peer_hello_;
  std::uint32_t next_serial_ = 1;  // initiator: serials of our calls
  std::uint32_t hello_serial_ = 0;
  std::uint32_t max_open_serial_ = 0;  // responder: highest stream serial opened so far
  std::map<std::uint32_t, std::unique_ptr<Stream>> streams_;
  std::map<std::uint32_t, ReplyHandler> pending_calls_;
  std::vector<std::unique_ptr<Stream>> released_;
  bool reap_scheduled_ = false;

  // Read side.
  std::vector<std::uint8_t> rbuf_;
  std::size_t rstart_ = 0, rend_ = 0;
  // Splice receive path: what the read in flight is for.
  enum class ReadStep { prefix, body, splice, discard };
  ReadStep step_ = ReadStep::prefix;
  PacketHeader current_{};
  std::size_t wanted_ = 0;  // bytes of the current step still to read
  std::uint32_t splice_serial_ = 0;
  Stream* splice_stream_ = nullptr;
  Op read_op_;

  // Write side.
  std::deque<OutItem> out_;
  std::size_t out_sent_ = 0;  // bytes of out_.front() already sent
  std::size_t control_bytes_ = 0;
  std::vector<iovec> iov_;
  msghdr msg_{};
  std::size_t iov_items_ = 0;
  bool write_polling_ = false;  // write_op_ waits for room rather than sends
  bool writing_ = false;
  Op write_op_;

  // Liveness.
  boost::asio::steady_timer handshake_timer_;
  boost::asio::steady_timer keepalive_timer_;
  std::chrono::steady_clock::time_point last_rx_;

  bool closing_ = false;
  bool close_reported_ = false;
  std::string close_reason_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace nbdtunnel::tunnel
