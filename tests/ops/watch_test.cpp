// Watching a live dest: `nbdtunnel status` on its control socket and GET /metrics, while a
// stream carries bytes, and after the faults the counters are for (a silent client, garbage
// instead of HELLO, a connection over a limit, bad HTTP).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/nbd_servers.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/sockets.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/ops/ops_tools.hpp"

namespace nbdtunnel::testing {
namespace {

using nlohmann::json;

// A dest with a control socket and a metrics port, an echo target behind it (socat) and a
// source in front.
class WatchedDest : public ::testing::Test {
 protected:
  void SetUp() override {
    NBDTUNNEL_REQUIRE_TOOLS("socat");
    echo_ = std::make_unique<Process>(
        "echo",
        std::vector<std::string>{"socat", "UNIX-LISTEN:" + dir_.file("echo.sock") + ",fork",
                                 "EXEC:cat"},
        dir_.file("echo.log"));
    ASSERT_TRUE(wait_for_unix_listener(dir_.file("echo.sock"), Seconds(10))) << echo_->log();
    dest_ = std::make_unique<TunnelDest>(
        start_dest(dir_, {"echo=" + dir_.file("echo.sock")},
                   {"--control-socket", dir_.file("control.sock"), "--metrics-listen", "0",
                    "--handshake-timeout", "1", "--max-handshakes-per-address", "2"}));
    auto m =
        dest_->process.wait_for_log(R"(metrics on http://127\.0\.0\.1:(\d+)/metrics)", Seconds(10));
    ASSERT_TRUE(m) << dest_->process.log();
    metrics_port_ = std::stoi((*m)[1]);
  }

  std::string metrics() {
    auto reply = http_exchange(metrics_port_, "GET /metrics HTTP/1.0\r\n\r\n");
    return reply.value_or("");
  }

  // The value of one metrics sample, or -1.
  long long sample(const std::string& name) {
    const std::string text = metrics();
    const std::size_t at = text.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::stoll(text.substr(at + name.size() + 2));
  }

  // Waits (bounded) until a sample reaches at least `value`.
  bool sample_reaches(const std::string& name, long long value) {
    for (int i = 0; i < 100; ++i) {
      if (sample(name) >= value) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  CommandOutput status(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{nbdtunnel_binary(), "status", "--control-socket",
                                  dir_.file("control.sock")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return capture(dir_, "status-" + std::to_string(++runs_), argv);
  }

  TempDir dir_;
  std::unique_ptr<Process> echo_;
  std::unique_ptr<TunnelDest> dest_;
  int metrics_port_ = 0;
  int runs_ = 0;
};

TEST_F(WatchedDest, StatusAndMetricsShowAChannelItsStreamAndItsBytes) {
  auto source = start_source(dir_, dest_->port, {dir_.file("src.sock") + "=echo"});
  RawSocket client = RawSocket::connect_unix(dir_.file("src.sock"));
  const auto data = random_bytes(1 << 20, 3);
  ASSERT_TRUE(client.send_all(data));
  auto back = client.read_exact(data.size(), Seconds(20));
  ASSERT_TRUE(back);
  EXPECT_EQ(0, std::memcmp(back->data(), data.data(), data.size()));

  // The stream is still open: status lists it, with its bytes each way.
  const auto human = status();
  EXPECT_EQ(human.exit, 0) << human.output;
  EXPECT_TRUE(std::regex_search(human.output, std::regex(R"(peer 127\.0\.0\.1:\d+ \(host ')")))
      << human.output;
  EXPECT_TRUE(std::regex_search(human.output, std::regex(R"(echo +open +1\.0 MiB +1\.0 MiB)")))
      << human.output;
  const auto machine = status({"--json"});
  ASSERT_EQ(machine.exit, 0) << machine.output;
  const json j = json::parse(machine.output);
  ASSERT_EQ(j["threads"].size(), 1u);
  const json& channels = j["threads"][0]["channels"];
  ASSERT_EQ(channels.size(), 1u) << j.dump();
  ASSERT_EQ(channels[0]["streams"].size(), 1u) << j.dump();
  EXPECT_EQ(channels[0]["streams"][0]["bytes_received"], 1u << 20);
  EXPECT_EQ(channels[0]["streams"][0]["bytes_sent"], 1u << 20);
  EXPECT_EQ(channels[0]["state"], "ready");
  EXPECT_EQ(j["totals"]["streams_open"], 1u);

  EXPECT_EQ(sample("nbdtunnel_channels_open"), 1);
  EXPECT_EQ(sample("nbdtunnel_streams_open"), 1);
  EXPECT_EQ(sample(R"(nbdtunnel_stream_bytes_total{direction="received"})"), 1 << 20);
  EXPECT_EQ(sample(R"(nbdtunnel_stream_bytes_total{direction="sent"})"), 1 << 20);

  client.close();
  EXPECT_TRUE(sample_reaches("nbdtunnel_streams_total", 1));
  for (int i = 0; i < 100 && sample("nbdtunnel_streams_open") != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(sample("nbdtunnel_streams_open"), 0);
}

TEST_F(WatchedDest, HandshakeFailuresAndRefusalsAreCountedByCause) {
  // Garbage instead of HELLO: closed at once.
  RawSocket garbage = RawSocket::connect_tcp("127.0.0.1", dest_->port);
  const std::string junk(64, 'x');
  garbage.send_all(std::as_bytes(std::span(junk.data(), junk.size())));
  EXPECT_TRUE(garbage.wait_closed(Seconds(5)));
  EXPECT_TRUE(sample_reaches(R"(nbdtunnel_handshake_failures_total{cause="hello"})", 1));
  // Two silent clients fill this address's handshake places; a third is refused; the two time
  // out after --handshake-timeout.
  RawSocket silent1 = RawSocket::connect_tcp("127.0.0.1", dest_->port);
  RawSocket silent2 = RawSocket::connect_tcp("127.0.0.1", dest_->port);
  EXPECT_TRUE(sample_reaches("nbdtunnel_connections_accepted_total", 3));
  RawSocket refused = RawSocket::connect_tcp("127.0.0.1", dest_->port);
  EXPECT_TRUE(refused.wait_closed(Seconds(5)));
  EXPECT_TRUE(sample_reaches(R"(nbdtunnel_refusals_total{limit="handshakes_per_address"})", 1));
  EXPECT_TRUE(silent1.wait_closed(Seconds(10)));
  EXPECT_TRUE(silent2.wait_closed(Seconds(10)));
  EXPECT_TRUE(sample_reaches(R"(nbdtunnel_handshake_failures_total{cause="timeout"})", 2));
  EXPECT_EQ(sample("nbdtunnel_channels_total"), 0);
  const auto human = status();
  EXPECT_NE(human.output.find("handshake failures: hello=1 timeout=2"), std::string::npos)
      << human.output;
  EXPECT_NE(human.output.find("refusals: handshakes_per_address=1"), std::string::npos)
      << human.output;
}

TEST_F(WatchedDest, TheMetricsEndpointAnswersOnlyGetMetricsAndBoundsWhatItReads) {
  auto reply = http_exchange(metrics_port_, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << *reply;
  EXPECT_NE(reply->find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(reply->find("\nnbdtunnel_resumes_total 0\n"), std::string::npos);
  struct Case {
    std::string request;
    const char* status;
  };
  for (const Case& c :
       {Case{"POST /metrics HTTP/1.0\r\n\r\n", "405"}, Case{"GET /secret HTTP/1.0\r\n\r\n", "404"},
        Case{std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", 12), "400"},
        Case{"GET /metrics HTTP/1.0\r\nX: " + std::string(9000, 'a'), "431"}}) {
    auto r = http_exchange(metrics_port_, c.request);
    ASSERT_TRUE(r) << c.request.substr(0, 40);
    EXPECT_EQ(r->rfind(std::string("HTTP/1.0 ") + c.status, 0), 0u) << *r;
  }
  auto head = http_exchange(metrics_port_, "HEAD /metrics HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->substr(head->size() - 4), "\r\n\r\n") << "HEAD has no body";
  // A client that sends nothing holds no one up, and is dropped after 5 s.
  RawSocket silent = RawSocket::connect_tcp("127.0.0.1", metrics_port_);
  EXPECT_NE(metrics().find("nbdtunnel_channels_open"), std::string::npos);
  EXPECT_TRUE(silent.wait_closed(Seconds(8)));
}

TEST_F(WatchedDest, StatusSaysWhenItCannotAsk) {
  const auto bad = capture(dir_, "status-bad",
                           {nbdtunnel_binary(), "status", "--control-socket", dir_.file("none")});
  EXPECT_EQ(bad.exit, 1);
  EXPECT_NE(bad.output.find("cannot connect to " + dir_.file("none")), std::string::npos)
      << bad.output;
}

}  // namespace
}  // namespace nbdtunnel::testing
