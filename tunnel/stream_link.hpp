#pragma once
// What a stream sees of its channel: a narrow interface (queue this payload, grant this credit,
// I am done), so that streams never call into the channel's internals and the channel's files
// do not call each other in circles. The channel implements it.

#include <cstddef>
#include <cstdint>
#include <functional>

#include "tunnel/poster.hpp"
#include "tunnel/protocol.hpp"
#include "tunnel/result.hpp"
#include "tunnel/ring.hpp"
#include "tunnel/traffic_counters.hpp"
#include "tunnel/tx_lease.hpp"

namespace nbdtunnel::tunnel {

class StreamLink {
 public:
  virtual Ring& ring() = 0;
  // Runs work after the current handler while the channel lives.
  virtual Poster& poster() = 0;
  // Queue a STREAM packet: payload (the lease carries header and bytes).
  virtual void send_payload(BufferLease lease) = 0;
  virtual void send_payload(PipeLease lease) = 0;
  // Queue an empty CONTINUE (end of data this way), an empty OK (finish) or an ERROR.
  virtual void send_end_of_data(std::uint32_t serial) = 0;
  virtual void send_finish(std::uint32_t serial) = 0;
  virtual void send_error(std::uint32_t serial, const RemoteError& e) = 0;
  // Grant the peer `bytes` more payload bytes on this stream.
  virtual void grant_credit(std::uint32_t serial, std::uint32_t bytes) = 0;
  // Responder: the local socket is connected (or failed to connect).
  virtual void connected(std::uint32_t serial, const Status& result) = 0;
  // The stream has closed, or an operation of a closed stream finished: reap it once idle.
  virtual void done(std::uint32_t serial) = 0;
  // Receive window beyond the stream's first one, from the channel's budget: up to `bytes`
  // (what is left of the budget), given back when the stream closes.
  virtual std::size_t take_window(std::size_t bytes) = 0;
  virtual void return_window(std::size_t bytes) = 0;
  // Where the stream's traffic is counted (the daemon's metrics), or nowhere.
  virtual TrafficCounters* counters() { return nullptr; }

 protected:
  ~StreamLink() = default;
};

}  // namespace nbdtunnel::tunnel
