#pragma once
// The counters of one `nbdtunnel dest`, shared by its threads, and their Prometheus text
// (exposition format 0.0.4). Connections and channels are counted here by DestServer; the
// streams' traffic by the channels themselves, in a tunnel::TrafficCounters this owns.

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <system_error>

#include "tunnel/traffic_counters.hpp"

namespace nbdtunnel::engine {

// Why a connection did not become a channel.
enum class HandshakeFailure {
  timeout,      // no TLS handshake or HELLO within --handshake-timeout
  not_tls,      // a plain or non-TLS client at a TLS destination
  certificate,  // the client's certificate was missing, unsigned, expired, revoked or not allowed
  tls,          // any other TLS failure (protocol error, connection lost mid-handshake)
  hello,        // the connection closed before HELLO completed (refused HELLO, garbage, EOF)
};
inline constexpr std::size_t kHandshakeFailures = 5;

// The limit a connection or stream was refused for.
enum class RefusalLimit {
  channels,                // --max-channels
  handshakes,              // --max-handshakes
  handshakes_per_address,  // --max-handshakes-per-address
  streams,                 // --max-streams (the daemon's)
  channel_streams,         // --max-channel-streams
};
inline constexpr std::size_t kRefusalLimits = 5;

const char* to_string(HandshakeFailure cause);
const char* to_string(RefusalLimit limit);
// The cause of a failed TLS handshake, from the error code tunnel::TlsHandshake reports.
HandshakeFailure classify_tls_failure(const std::error_code& code);

class Metrics {
 public:
  // tunnel::Channel's close reason for a connection that resumed another channel.
  static constexpr const char* kHandedOver = "handed over to the channel it resumed";

  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // For ChannelConfig::counters: what the channels count of their streams.
  std::shared_ptr<tunnel::TrafficCounters> traffic() const { return traffic_; }

  void connection_accepted() { add(accepted_); }
  void channel_opened() { add(channels_opened_); }  // HELLO done
  // A channel closed: one that had opened, or a connection that failed before HELLO (or, with
  // reason kHandedOver, one that resumed another channel).
  void channel_ended(bool hello_done, const std::string& reason);
  void channel_lost() { add(losses_); }
  void channel_resumed() { add(resumes_); }
  void handshake_failed(HandshakeFailure cause) { add(failures_[static_cast<std::size_t>(cause)]); }
  // Connections refused on accept (channels, handshakes); streams are counted by the channels.
  void refused(RefusalLimit limit) { add(refusals_[static_cast<std::size_t>(limit)]); }

  std::uint64_t channels_open() const;
  std::uint64_t channels_total() const { return get(channels_opened_); }
  std::uint64_t handshake_failures(HandshakeFailure cause) const {
    return get(failures_[static_cast<std::size_t>(cause)]);
  }
  std::uint64_t refusals(RefusalLimit limit) const;

  // Every counter, in Prometheus' text format.
  std::string prometheus() const;

 private:
  using Counter = tunnel::TrafficCounters::Counter;
  static void add(Counter& c) { c.fetch_add(1, std::memory_order_relaxed); }
  static std::uint64_t get(const Counter& c) { return c.load(std::memory_order_relaxed); }

  std::shared_ptr<tunnel::TrafficCounters> traffic_;
  Counter accepted_{0};
  Counter channels_opened_{0};
  Counter channels_closed_{0};
  Counter losses_{0};
  Counter resumes_{0};
  std::array<Counter, kHandshakeFailures> failures_{};
  std::array<Counter, kRefusalLimits> refusals_{};
};

}  // namespace nbdtunnel::engine
