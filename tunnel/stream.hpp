#pragma once
// One tunnelled connection: a local socket on this host, carried as STREAM packets on a channel.
// Each direction is flow-controlled by credits: we send at most as many payload bytes as the
// peer granted, and grant credit back as our receive window drains into the local socket.

#include <sys/un.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tunnel/protocol.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel {

class Channel;

// The largest receive window, at most `window`, for which a splice stream gets a pipe of twice
// the window (payload pages may arrive partly filled). Unprivileged processes cannot grow pipes
// past fs.pipe-max-size (1 MiB by default), so this is often less than asked for.
std::uint32_t splice_window_limit(std::uint32_t window);

struct StreamStats {
  std::uint64_t bytes_to_peer = 0;    // read from the local socket, sent on the channel
  std::uint64_t bytes_from_peer = 0;  // received on the channel, written to the local socket
};

class Stream {
 public:
  enum class State { opening, open, closed };

  // splice: bytes move socket → pipe → socket in both directions (no copy through user space)
  // instead of through user-space buffers.
  Stream(Channel& channel, std::uint32_t serial, std::string target, std::string tag,
         unique_fd local, std::uint32_t window, std::uint32_t chunk, bool splice);
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  std::uint32_t serial() const { return serial_; }
  const std::string& target() const { return target_; }
  const std::string& tag() const { return tag_; }
  State state() const { return state_; }
  const StreamStats& stats() const { return stats_; }

  // Responder: connect the local socket to path; the channel replies when it completes.
  void connect(const std::string& path);
  // Both sides: the stream is open; start moving bytes. credit is the peer's window.
  void start(std::uint32_t credit);
  // A STREAM packet for this stream arrived.
  void on_packet(std::uint32_t status, std::span<const std::uint8_t> body);
  // A STREAM_CREDIT message for this stream arrived.
  void on_credit(std::uint32_t bytes);
  // Splice receive path: true if a payload of n bytes may be spliced into this stream's pipe now.
  bool can_splice(std::size_t n) const;
  int pipe_write_fd() const { return pipe_w_.get(); }
  // The channel is splicing into (busy) or has spliced n bytes into the pipe.
  void set_splicing(bool busy) { splicing_in_ = busy; }
  void on_spliced(std::size_t n);
  // The channel finished sending the packet held in tx buffer `index`.
  void on_buffer_sent(int index);
  // The channel sent a packet of n payload bytes from this stream's pipe.
  void on_pipe_sent(std::size_t n);
  // Ends the stream at once. If notify_peer, an ERROR packet tells the peer why.
  void abort(ErrorCode code, const std::string& reason, bool notify_peer);
  // True when no operation or buffer of this stream is still in use.
  bool idle() const;
  // Buffers queued on the channel are dropped (the channel is gone); forget them.
  void forget_queued_buffers();

 private:
  struct TxBuffer {
    enum class Use { free, receiving, queued };
    std::vector<std::uint8_t> bytes;  // kPrefixSize header room + chunk payload
    Use use = Use::free;
  };

  void arm_recv();
  void on_recv(int res);
  void fill_pipe();
  void fill_pipe_now();
  void on_readable(int res);
  void arm_send();
  void on_send(int res);
  void drain_pipe();
  void on_writable(int res);
  // n bytes from the peer reached the local socket.
  void delivered(std::size_t n);
  void on_connect(int res);
  void maybe_finish();
  void grant_credit();
  void close_local();
  std::string describe() const;
  // The header of a STREAM packet of this stream.
  PacketHeader stream_header(PacketStatus status) const;

  Channel& channel_;
  const std::uint32_t serial_;
  const std::string target_;
  const std::string tag_;
  unique_fd local_;
  State state_ = State::opening;
  StreamStats stats_;

  // Local → peer.
  std::uint32_t chunk_;
  std::array<TxBuffer, 2> tx_;
  int receiving_index_ = -1;
  std::uint64_t tx_credit_ = 0;
  std::size_t recv_reserved_ = 0;
  bool local_eof_ = false;
  unique_fd tx_pipe_r_, tx_pipe_w_;  // splice mode: instead of tx_
  std::size_t tx_piped_ = 0;         // bytes in tx_pipe_ queued on the channel
  bool filling_ = false;
  Op recv_op_;

  // Peer → local: a ring of window bytes, or (splice) a pipe holding up to window bytes.
  std::size_t window_;
  std::vector<std::uint8_t> rx_;
  unique_fd pipe_r_, pipe_w_;
  bool splicing_in_ = false;
  bool drain_posted_ = false;
  std::size_t rx_head_ = 0;
  std::size_t rx_used_ = 0;
  std::uint64_t credit_owed_ = 0;
  bool remote_eof_ = false;
  bool local_shut_wr_ = false;
  Op send_op_;

  // Opening and closing.
  sockaddr_un connect_addr_{};
  Op connect_op_;
  bool finish_sent_ = false;
  bool finish_received_ = false;
};

}  // namespace nbdtunnel::tunnel
