// engine/metrics.*: the counters and their Prometheus text.
#include "engine/metrics.hpp"

#include <gtest/gtest.h>

#include <regex>
#include <sstream>
#include <string>

namespace nbdtunnel::engine {
namespace {

// The value of one sample line "NAME VALUE" (NAME may carry labels), or -1.
long long sample(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) return std::stoll(line.substr(name.size() + 1));
  }
  return -1;
}

TEST(Metrics, StartAtZeroAndEveryFamilyHasHelpAndType) {
  Metrics m;
  const std::string text = m.prometheus();
  for (const char* family :
       {"nbdtunnel_channels_open", "nbdtunnel_channels_total", "nbdtunnel_streams_open",
        "nbdtunnel_streams_total", "nbdtunnel_stream_bytes_total", "nbdtunnel_credit_stalls_total",
        "nbdtunnel_handshake_failures_total", "nbdtunnel_refusals_total", "nbdtunnel_resumes_total",
        "nbdtunnel_connections_accepted_total"}) {
    EXPECT_NE(text.find(std::string("# HELP ") + family + " "), std::string::npos) << family;
    EXPECT_NE(text.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }
  EXPECT_EQ(sample(text, "nbdtunnel_channels_open"), 0);
  EXPECT_EQ(sample(text, "nbdtunnel_resumes_total"), 0);
  EXPECT_EQ(sample(text, R"(nbdtunnel_handshake_failures_total{cause="certificate"})"), 0);
  // Every line is a comment or NAME{LABELS} VALUE: what Prometheus' text parser takes.
  const std::regex line_re(R"((# (HELP|TYPE) .*)|([a-z_]+(\{[a-z_]+="[^"]*"\})? [0-9]+))");
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    EXPECT_TRUE(std::regex_match(line, line_re)) << line;
  }
}

TEST(Metrics, CountChannelsStreamsBytesFailuresAndRefusals) {
  Metrics m;
  auto t = m.traffic();
  m.connection_accepted();
  m.channel_opened();
  m.channel_opened();
  m.channel_ended(true, "peer closed");
  m.channel_ended(false, "no HELLO within 10000 ms");
  m.channel_ended(false, "peer sent OPEN_TUNNEL before HELLO");
  m.handshake_failed(classify_tls_failure(std::make_error_code(std::errc::permission_denied)));
  m.handshake_failed(classify_tls_failure(std::make_error_code(std::errc::timed_out)));
  m.handshake_failed(classify_tls_failure(std::make_error_code(std::errc::protocol_not_supported)));
  m.handshake_failed(classify_tls_failure(std::make_error_code(std::errc::connection_reset)));
  m.refused(RefusalLimit::handshakes_per_address);
  tunnel::TrafficCounters::add(t->streams_opened, 3);
  tunnel::TrafficCounters::add(t->streams_closed, 1);
  tunnel::TrafficCounters::add(t->bytes_received, 1 << 20);
  tunnel::TrafficCounters::add(t->bytes_sent, 42);
  tunnel::TrafficCounters::add(t->credit_stalls, 2);
  tunnel::TrafficCounters::add(t->refused_daemon);
  tunnel::TrafficCounters::add(t->refused_channel, 4);
  const std::string text = m.prometheus();
  EXPECT_EQ(sample(text, "nbdtunnel_connections_accepted_total"), 1);
  EXPECT_EQ(sample(text, "nbdtunnel_channels_open"), 1);
  EXPECT_EQ(sample(text, "nbdtunnel_channels_total"), 2);
  EXPECT_EQ(sample(text, "nbdtunnel_streams_open"), 2);
  EXPECT_EQ(sample(text, "nbdtunnel_streams_total"), 3);
  EXPECT_EQ(sample(text, R"(nbdtunnel_stream_bytes_total{direction="received"})"), 1 << 20);
  EXPECT_EQ(sample(text, R"(nbdtunnel_stream_bytes_total{direction="sent"})"), 42);
  EXPECT_EQ(sample(text, "nbdtunnel_credit_stalls_total"), 2);
  EXPECT_EQ(sample(text, R"(nbdtunnel_handshake_failures_total{cause="timeout"})"), 2);
  EXPECT_EQ(sample(text, R"(nbdtunnel_handshake_failures_total{cause="hello"})"), 1);
  EXPECT_EQ(sample(text, R"(nbdtunnel_handshake_failures_total{cause="certificate"})"), 1);
  EXPECT_EQ(sample(text, R"(nbdtunnel_handshake_failures_total{cause="not_tls"})"), 1);
  EXPECT_EQ(sample(text, R"(nbdtunnel_handshake_failures_total{cause="tls"})"), 1);
  EXPECT_EQ(sample(text, R"(nbdtunnel_refusals_total{limit="handshakes_per_address"})"), 1);
  EXPECT_EQ(sample(text, R"(nbdtunnel_refusals_total{limit="channels"})"), 0);
  EXPECT_EQ(sample(text, R"(nbdtunnel_refusals_total{limit="streams"})"), 1);
  EXPECT_EQ(sample(text, R"(nbdtunnel_refusals_total{limit="channel_streams"})"), 4);
}

}  // namespace
}  // namespace nbdtunnel::engine
