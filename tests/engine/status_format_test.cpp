// engine/status_command.*: how `nbdtunnel status` shows a query-status answer.
#include <gtest/gtest.h>

#include "engine/status_command.hpp"

namespace nbdtunnel::engine {
namespace {

using nlohmann::json;

TEST(StatusFormat, ShowsChannelsPeersStreamsBytesAndMigrations) {
  const json status = json::parse(R"({
    "version": "0.1.0", "pid": 42, "uptime": 12.3,
    "totals": {"channels_open": 1, "channels_total": 3, "streams_open": 2, "streams_total": 9,
               "bytes_received": 1048576, "bytes_sent": 2048, "credit_stalls": 5,
               "handshake_failures": {"timeout": 0, "certificate": 2},
               "refusals": {"channels": 0, "streams": 1}},
    "threads": [{"listen": "0.0.0.0:49152", "channels": [
      {"peer": "192.0.2.1:50000", "host": "src", "state": "ready", "tls": true, "age": 7.0,
       "migrations": [{"id": "m1", "kind": "qmp"}],
       "streams": [{"serial": 3, "target": "migration/m1", "state": "open",
                    "bytes_received": 1048576, "bytes_sent": 2048}]}]}]})");
  const std::string text = format_status(status);
  EXPECT_NE(text.find("listening on 0.0.0.0:49152"), std::string::npos) << text;
  EXPECT_NE(text.find("channels: 1 open, 3 since start"), std::string::npos) << text;
  EXPECT_NE(text.find("1.0 MiB received, 2.0 KiB sent; credit stalls: 5"), std::string::npos)
      << text;
  EXPECT_NE(text.find("handshake failures: certificate=2; refusals: streams=1"), std::string::npos)
      << text;
  EXPECT_NE(text.find("peer 192.0.2.1:50000 (host 'src'), ready, TLS"), std::string::npos) << text;
  EXPECT_NE(text.find("migration m1 (qmp)"), std::string::npos) << text;
  EXPECT_NE(text.find("migration/m1"), std::string::npos) << text;
}

TEST(StatusFormat, AnIdleDaemonAndAThreadThatDidNotAnswer) {
  const json status = json::parse(
      R"({"version": "0.1.0", "pid": 1, "uptime": 1, "totals": {},
          "threads": [{"listen": "127.0.0.1:1", "channels": []}, {"error": "late"}]})");
  const std::string text = format_status(status);
  EXPECT_NE(text.find("no channels"), std::string::npos) << text;
  EXPECT_NE(text.find("(a thread: late)"), std::string::npos) << text;
  EXPECT_NE(text.find("handshake failures: none; refusals: none"), std::string::npos) << text;
}

TEST(StatusFormat, SurvivesAnAnswerOfTheWrongShape) {
  EXPECT_NO_THROW(format_status(json::object()));
  EXPECT_NO_THROW(format_status(json::parse(R"({"threads": [{"channels": [{}]}]})")));
}

}  // namespace
}  // namespace nbdtunnel::engine
