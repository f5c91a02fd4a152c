#pragma once
// What leaves the channel next: control packets (owned bytes), buffer leases and pipe payloads,
// in the order they were queued. One place decides how a batch leaves: everything up to the next
// pipe payload (its prefix included) in one gathered write, then that payload by splice.
// A transport that holds bytes it accepted (TLS records) is flushed until it holds none, so
// busy() is true until they are out or the wait fails.
// Queuing never writes at once: a flush runs after the current handler, so a stream that queues
// from inside a completion is never called back before it returns.
// A resumable channel's queue retains what it wrote (retain()) until the peer acknowledges it
// (ack), so that after the connection is lost (detach) it can write it again on a new one
// (attach), from wherever the peer's byte count says. Pipe payloads cannot be retained.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <variant>
#include <vector>

#include "tunnel/poster.hpp"
#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/transport.hpp"
#include "tunnel/tx_lease.hpp"

namespace nbdtunnel::tunnel {

class WriteQueue {
 public:
  using ControlPacket = std::vector<std::uint8_t>;
  using Item = std::variant<ControlPacket, BufferLease, PipeLease>;

  // Queued control packets the peer has not read, past which it is not keeping up.
  static constexpr std::size_t kMaxControlBytes = 8u << 20;
  // iovecs per gathered write.
  static constexpr std::size_t kMaxIov = 64;

  // on_failed: writing failed (the channel is unusable); called at most once.
  WriteQueue(Transport& transport, Poster& poster, std::function<void(const Error&)> on_failed);
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  // Queues a whole packet. Fails (and queues nothing) past kMaxControlBytes of control packets.
  Status push(ControlPacket packet);
  void push(BufferLease lease);
  void push(PipeLease lease);
  // Writes what the transport takes now, without waiting (before a close, so that a last
  // reply gets out).
  void flush_now() {
    if (!flushing_ && !op_.busy() && !closed_ && !detached_) flush();
  }
  // Drops everything queued and retained (each lease returns to its owner) and refuses what
  // comes later.
  void close();

  // From now on, items stay after they are written until ack() covers them.
  void retain();
  bool retaining() const { return retain_; }
  // The peer has received the first `received` bytes of the byte stream. An error if that is
  // more than was written.
  Status ack(std::uint64_t received);
  // The transport is gone: writing stops; queued and retained items stay. busy() says when the
  // wait in flight (if any) is over.
  void detach();
  // Writing goes on, on `transport`: first `first` (a packet outside the byte stream, e.g. the
  // RESUME reply), then every byte past the peer's `received`. An error, and nothing changed, if
  // those bytes are not all retained.
  Status attach(Transport& transport, std::uint64_t received, ControlPacket first = {});
  // Whether a packet written straight to the transport now would not cut into another.
  bool at_packet_boundary() const {
    return !detached_ && !closed_ && front_sent_ == 0 && first_.empty() &&
           !transport_->has_pending_output();
  }
  // Bytes of the byte stream written so far (to every transport).
  std::uint64_t sent() const { return sent_; }
  // Bytes written and kept for the peer's acknowledgement.
  std::uint64_t unacknowledged() const { return sent_ - floor_; }
  // True while a wait for room is in flight (for queued items or the transport's own bytes).
  bool busy() const { return op_.busy(); }
  // Called when a wait still in flight at close() has completed.
  void on_idle(std::function<void()> f) { on_idle_ = std::move(f); }
  bool empty() const { return items_.empty(); }
  std::size_t size() const { return items_.size(); }

 private:
  void enqueue(Item item);
  void flush();
  Result<std::size_t> write_some();
  // n more bytes are on the transport: retire the items they complete.
  void retire(std::size_t n);
  void release(Item item);
  // Writes (what is left of) first_.
  Result<std::size_t> write_first();
  void on_writable(int res);

  Transport* transport_;
  Poster& poster_;
  std::function<void(const Error&)> on_failed_;
  std::function<void()> on_idle_;
  std::deque<Item> items_;
  std::size_t front_sent_ = 0;  // bytes of items_.front() already written
  std::size_t control_bytes_ = 0;
  std::vector<iovec> iov_;
  bool flush_posted_ = false;
  bool flushing_ = false;
  bool closed_ = false;
  bool detached_ = false;
  Op op_;

  // Retention. Byte stream offsets: floor_ is the first byte the peer may still be missing
  // (everything before it is acknowledged or was written before retain()); retained_ holds the
  // items written whole since, the first starting at retained_base_; items_.front() starts at
  // sent_ - front_sent_.
  bool retain_ = false;
  std::deque<Item> retained_;
  std::uint64_t retained_base_ = 0;
  std::uint64_t sent_ = 0;
  std::uint64_t floor_ = 0;
  ControlPacket first_;  // written before anything else on a new transport
  std::size_t first_sent_ = 0;
};

}  // namespace nbdtunnel::tunnel
