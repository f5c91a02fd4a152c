#pragma once
// Reads the channel's bytes from its transport and hands over whole packets. Copy mode reads as
// much as the buffer holds and decodes every packet in it in place. Splice mode follows
// FrameSteps: it reads each 28-byte prefix, then the body, or splices a STREAM payload from the
// transport straight into its stream's pipe. The reader knows streams only by serial: it asks
// its sink for a stream's pipe at every splice, so a stream closed mid-payload simply has the
// rest of its payload discarded.
// Memory: an unauthenticated connection must cost kilobytes, so the buffer starts small and packets
// are limited to kHandshakeMaxPacket until the channel calls allow_full_packets() (HELLO done);
// after that the buffer grows to what the traffic needs (kBufferSize in copy mode, one packet in
// splice mode) and stays that size.
// A resumable channel moves its reader to a new transport (attach) with its state intact: a
// packet cut off by the lost connection goes on with the bytes the peer sends again.

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "tunnel/frame_steps.hpp"
#include "tunnel/poster.hpp"
#include "tunnel/protocol.hpp"
#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/transport.hpp"

namespace nbdtunnel::tunnel {

// Where the reader's output goes (the channel).
class FrameSink {
 public:
  virtual void on_packet(const PacketHeader& h, std::span<const std::uint8_t> body) = 0;
  // Splice mode: the pipe a STREAM payload of n bytes for serial may be spliced into now, or -1.
  virtual int splice_pipe(std::uint32_t serial, std::size_t n) = 0;
  // The pipe the rest of a payload goes to once splice_pipe admitted its start, or -1 if its
  // stream has closed since: an admitted payload arrives whole, whatever splice_pipe would say
  // of a new one now.
  virtual int splice_pipe_rest(std::uint32_t serial) = 0;
  virtual void on_spliced(std::uint32_t serial, std::size_t n) = 0;
  // Reading ended with the connection: ok if the peer closed it, else why it failed. Called
  // once (until attach).
  virtual void on_read_ended(const Status& why) = 0;
  // Reading ended because the peer's bytes are not packets of this protocol.
  virtual void on_malformed(const Error& why) = 0;

 protected:
  ~FrameSink() = default;
};

class FrameReader {
 public:
  // Reads made in a row before the reader lets other work on the thread run.
  static constexpr int kBudget = 64;
  // Copy mode's buffer once traffic flows: many packets per read.
  static constexpr std::size_t kBufferSize = 4u << 20;
  // The buffer of a new connection, and the largest packet accepted before HELLO is done (a
  // HELLO is well below it).
  static constexpr std::size_t kHandshakeMaxPacket = 16u << 10;

  FrameReader(Transport& transport, Ring& ring, Poster& poster, FrameSink& sink, bool splice);
  FrameReader(const FrameReader&) = delete;
  FrameReader& operator=(const FrameReader&) = delete;

  void start();
  // No more reads or callbacks. A wait in flight is cancelled; busy() tells when it is over.
  void stop();
  // After stop() and once !busy(): reads go on from `transport`, where the last one left off.
  void attach(Transport& transport);
  // Bytes read from every transport so far: the channel's byte stream received.
  std::uint64_t received() const { return received_; }
  bool busy() const { return op_.busy(); }
  // Called when a wait still in flight at stop() has completed.
  void on_idle(std::function<void()> f) { on_idle_ = std::move(f); }
  // A stream left the table: if the reader waits for room in its pipe, it stops waiting.
  void stream_released(std::uint32_t serial);
  std::chrono::steady_clock::time_point last_read() const { return last_read_; }
  // The handshake is done: packets up to kMaxPacket are accepted from now on.
  void allow_full_packets() { max_packet_ = kMaxPacket; }
  std::size_t buffer_size() const { return buf_.size(); }
  // Bytes read past the last packet delivered and not yet part of one.
  std::size_t unread() const { return splice_ ? 0 : end_ - start_; }

 private:
  void pump();
  // One read (copy or splice mode); false once the reader waits, yields or has ended.
  bool read_copy();
  bool read_spliced();
  // The read or splice returned r: false (after waiting or ending) unless bytes came in.
  bool settle(const Result<std::size_t>& r, int pipe);
  void deliver_buffered();
  // Makes room for a packet of size bytes at the start of the buffer (unconsumed bytes kept).
  void reserve(std::size_t size);
  void end(const Status& why);
  void end_malformed(const Error& why);
  Error framing_error(const Error& e) const;
  void on_wait_done(int res);

  Transport* transport_;
  Ring& ring_;
  Poster& poster_;
  FrameSink& sink_;
  const bool splice_;
  std::size_t max_packet_ = kHandshakeMaxPacket;
  FrameSteps steps_;
  std::vector<std::uint8_t> buf_;
  std::size_t start_ = 0, end_ = 0;  // unconsumed bytes of buf_
  std::uint32_t waiting_on_ = 0;     // serial whose pipe the wait in flight is for, or 0
  std::uint64_t received_ = 0;
  std::chrono::steady_clock::time_point last_read_;
  bool stopped_ = false;
  bool packets_ = false;  // a packet has been delivered
  std::function<void()> on_idle_;
  Op op_;
};

}  // namespace nbdtunnel::tunnel
