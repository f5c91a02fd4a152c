#include "engine/metrics.hpp"

#include <fmt/format.h>

#ifndef NBDTUNNEL_VERSION
#define NBDTUNNEL_VERSION "unknown"
#endif

namespace nbdtunnel::engine {

const char* to_string(HandshakeFailure cause) {
  switch (cause) {
    case HandshakeFailure::timeout:
      return "timeout";
    case HandshakeFailure::not_tls:
      return "not_tls";
    case HandshakeFailure::certificate:
      return "certificate";
    case HandshakeFailure::tls:
      return "tls";
    case HandshakeFailure::hello:
      return "hello";
  }
  return "unknown";
}

const char* to_string(RefusalLimit limit) {
  switch (limit) {
    case RefusalLimit::channels:
      return "channels";
    case RefusalLimit::handshakes:
      return "handshakes";
    case RefusalLimit::handshakes_per_address:
      return "handshakes_per_address";
    case RefusalLimit::streams:
      return "streams";
    case RefusalLimit::channel_streams:
      return "channel_streams";
  }
  return "unknown";
}

// tunnel/tls_handshake.cpp reports timed_out for its timer, protocol_not_supported for a peer
// that does not speak TLS, permission_denied for a refused certificate.
HandshakeFailure classify_tls_failure(const std::error_code& code) {
  if (code == std::errc::timed_out) return HandshakeFailure::timeout;
  if (code == std::errc::protocol_not_supported) return HandshakeFailure::not_tls;
  if (code == std::errc::permission_denied) return HandshakeFailure::certificate;
  return HandshakeFailure::tls;
}

void Metrics::channel_ended(bool hello_done, const std::string& reason) {
  if (hello_done) {
    add(channels_closed_);
    return;
  }
  if (reason == kHandedOver) return;  // a RESUME: the connection went on in its channel
  // tunnel/channel.cpp's handshake timer says "no HELLO within N ms".
  const bool timeout = reason.rfind("no HELLO within", 0) == 0;
  handshake_failed(timeout ? HandshakeFailure::timeout : HandshakeFailure::hello);
}

Metrics::Metrics() : traffic_(std::make_shared<tunnel::TrafficCounters>()) {}

std::uint64_t Metrics::channels_open() const {
  const std::uint64_t opened = get(channels_opened_), closed = get(channels_closed_);
  return opened > closed ? opened - closed : 0;
}

std::uint64_t Metrics::refusals(RefusalLimit limit) const {
  using T = tunnel::TrafficCounters;
  if (limit == RefusalLimit::streams) return T::get(traffic_->refused_daemon);
  if (limit == RefusalLimit::channel_streams) return T::get(traffic_->refused_channel);
  return get(refusals_[static_cast<std::size_t>(limit)]);
}

namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void sample(std::string& out, const char* name, std::uint64_t value) {
  fmt::format_to(std::back_inserter(out), "{} {}\n", name, value);
}

void sample(std::string& out, const char* name, const char* label, const char* label_value,
            std::uint64_t value) {
  fmt::format_to(std::back_inserter(out), "{}{{{}=\"{}\"}} {}\n", name, label, label_value, value);
}

}  // namespace

std::string Metrics::prometheus() const {
  using T = tunnel::TrafficCounters;
  const T& t = *traffic_;
  std::string out;
  family(out, "nbdtunnel_build_info", "gauge", "The version of this nbdtunnel.");
  sample(out, "nbdtunnel_build_info", "version", NBDTUNNEL_VERSION, 1);
  family(out, "nbdtunnel_connections_accepted_total", "counter",
         "TCP connections admitted (before TLS and HELLO).");
  sample(out, "nbdtunnel_connections_accepted_total", get(accepted_));
  family(out, "nbdtunnel_channels_open", "gauge", "Channels open now (HELLO done).");
  sample(out, "nbdtunnel_channels_open", channels_open());
  family(out, "nbdtunnel_channels_total", "counter", "Channels that completed HELLO.");
  sample(out, "nbdtunnel_channels_total", channels_total());
  const std::uint64_t opened = T::get(t.streams_opened), closed = T::get(t.streams_closed);
  family(out, "nbdtunnel_streams_open", "gauge", "Streams open now.");
  sample(out, "nbdtunnel_streams_open", opened > closed ? opened - closed : 0);
  family(out, "nbdtunnel_streams_total", "counter", "Streams that opened to their target.");
  sample(out, "nbdtunnel_streams_total", opened);
  family(out, "nbdtunnel_stream_bytes_total", "counter",
         "Stream payload bytes: received from peers (written to targets) and sent to peers.");
  sample(out, "nbdtunnel_stream_bytes_total", "direction", "received", T::get(t.bytes_received));
  sample(out, "nbdtunnel_stream_bytes_total", "direction", "sent", T::get(t.bytes_sent));
  family(out, "nbdtunnel_credit_stalls_total", "counter",
         "Times a stream had used all the credit its peer granted and waited for more.");
  sample(out, "nbdtunnel_credit_stalls_total", T::get(t.credit_stalls));
  family(out, "nbdtunnel_handshake_failures_total", "counter",
         "Connections that did not become a channel, by cause.");
  for (std::size_t i = 0; i < kHandshakeFailures; ++i) {
    sample(out, "nbdtunnel_handshake_failures_total", "cause",
           to_string(static_cast<HandshakeFailure>(i)), get(failures_[i]));
  }
  family(out, "nbdtunnel_refusals_total", "counter",
         "Connections and streams refused for a limit, by limit.");
  for (std::size_t i = 0; i < kRefusalLimits; ++i) {
    const auto limit = static_cast<RefusalLimit>(i);
    sample(out, "nbdtunnel_refusals_total", "limit", to_string(limit), refusals(limit));
  }
  family(out, "nbdtunnel_channel_losses_total", "counter",
         "Connections lost under a resumable channel (which then waited to be resumed).");
  sample(out, "nbdtunnel_channel_losses_total", get(losses_));
  family(out, "nbdtunnel_resumes_total", "counter",
         "Channels resumed on a new connection after a lost one.");
  sample(out, "nbdtunnel_resumes_total", get(resumes_));
  return out;
}

}  // namespace nbdtunnel::engine
