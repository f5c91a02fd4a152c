#pragma once
// What leaves the channel next: control packets (owned bytes), buffer leases and pipe payloads,
// in the order they were queued. One place decides how a batch leaves: everything up to the next
// pipe payload (its prefix included) in one gathered write, then that payload by splice.
// A transport that holds bytes it accepted (TLS records) is flushed until it holds none, so
// busy() is true until they are out or the wait fails.
// Queuing never writes at once: a flush runs after the current handler, so a stream that queues
// from inside a completion is never called back before it returns.

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
  // Drops everything queued (each lease returns to its owner) and refuses what comes later.
  void close();
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
  void on_writable(int res);

  Transport& transport_;
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
  Op op_;
};

}  // namespace nbdtunnel::tunnel
