#pragma once
// What a daemon counts of its streams, shared by all its channels and threads: bumped with
// relaxed atomics on the data path (one add per completed recv or send, not per byte), read by
// whoever reports them (engine/metrics.hpp).

#include <atomic>
#include <cstdint>

namespace nbdtunnel::tunnel {

struct TrafficCounters {
  using Counter = std::atomic<std::uint64_t>;
  Counter streams_opened{0};   // streams that reached their target and opened
  Counter streams_closed{0};   // of those, closed since
  Counter bytes_sent{0};       // payload read from local sockets and sent to the peer
  Counter bytes_received{0};   // payload received from the peer and written to local sockets
  Counter credit_stalls{0};    // times a stream had used every byte of credit the peer granted
  Counter refused_daemon{0};   // streams refused for the daemon's limit (--max-streams)
  Counter refused_channel{0};  // streams refused for the channel's limit (--max-channel-streams)

  static void add(Counter& c, std::uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
  static std::uint64_t get(const Counter& c) { return c.load(std::memory_order_relaxed); }
};

}  // namespace nbdtunnel::tunnel
