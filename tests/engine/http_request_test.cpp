// engine/http_request.*: the metrics endpoint's request parser, on good and malformed heads.
#include "engine/http_request.hpp"

#include <gtest/gtest.h>

#include <string>

namespace nbdtunnel::engine {
namespace {

using Status = HttpRequest::Status;

TEST(HttpRequest, GetMetricsIsAccepted) {
  const std::string head = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
  const HttpRequest r = parse_http_request(head);
  EXPECT_EQ(r.status, Status::ok);
  EXPECT_FALSE(r.head);
  EXPECT_EQ(r.size, head.size());
}

TEST(HttpRequest, Http10WithBareLineFeedsAndAQueryIsAccepted) {
  const HttpRequest r = parse_http_request("GET /metrics?x=1 HTTP/1.0\n\n");
  EXPECT_EQ(r.status, Status::ok);
}

TEST(HttpRequest, HeadIsAnsweredWithoutBody) {
  const HttpRequest r = parse_http_request("HEAD /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(r.status, Status::ok);
  EXPECT_TRUE(r.head);
}

TEST(HttpRequest, EveryPrefixOfAGoodRequestNeedsMore) {
  const std::string head = "GET /metrics HTTP/1.1\r\nHost: localhost:9649\r\n\r\n";
  for (std::size_t n = 0; n < head.size(); ++n) {
    EXPECT_EQ(parse_http_request(head.substr(0, n)).status, Status::need_more) << n;
  }
}

struct Bad {
  const char* name;
  std::string input;
  int code;
};

class HttpRequestRefused : public ::testing::TestWithParam<Bad> {};

TEST_P(HttpRequestRefused, WithItsStatus) {
  const HttpRequest r = parse_http_request(GetParam().input);
  EXPECT_EQ(r.status, Status::bad);
  EXPECT_EQ(r.code, GetParam().code);
  EXPECT_FALSE(r.reason.empty());
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, HttpRequestRefused,
    ::testing::Values(Bad{"post", "POST /metrics HTTP/1.0\r\n\r\n", 405},
                      Bad{"other_path", "GET / HTTP/1.0\r\n\r\n", 404},
                      Bad{"path_prefix", "GET /metricsx HTTP/1.0\r\n\r\n", 404},
                      Bad{"http2", "GET /metrics HTTP/2.0\r\n\r\n", 505},
                      Bad{"not_http", "GET /metrics FTP/1.0\r\n\r\n", 400},
                      Bad{"two_fields", "GET /metrics\r\n\r\n", 400},
                      Bad{"four_fields", "GET /metrics HTTP/1.0 x\r\n\r\n", 400},
                      Bad{"leading_space", " GET /metrics HTTP/1.0\r\n\r\n", 400},
                      Bad{"bad_method_char", "G(T /metrics HTTP/1.0\r\n\r\n", 400},
                      Bad{"nul_in_line", std::string("GET /met\0rics HTTP/1.0\r\n\r\n", 26), 400},
                      Bad{"nul_before_line_end", std::string("GET \0", 5), 400},
                      Bad{"tls_client_hello",
                          std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", 12), 400},
                      Bad{"header_without_colon", "GET /metrics HTTP/1.0\r\nHost\r\n\r\n", 400},
                      Bad{"header_empty_name", "GET /metrics HTTP/1.0\r\n: x\r\n\r\n", 400},
                      Bad{"header_control_char", "GET /metrics HTTP/1.0\r\nA: b\x01\r\n\r\n", 400},
                      Bad{"long_line", "GET /" + std::string(2000, 'a'), 414},
                      Bad{"long_line_complete",
                          "GET /" + std::string(2000, 'a') + " HTTP/1.0\r\n\r\n", 414},
                      Bad{"too_many_headers",
                          [] {
                            std::string s = "GET /metrics HTTP/1.0\r\n";
                            for (int i = 0; i < 100; ++i) s += "A: b\r\n";
                            return s + "\r\n";
                          }(),
                          431},
                      Bad{"head_too_large",
                          "GET /metrics HTTP/1.0\r\nA: " + std::string(kMaxHttpHead, 'x'), 431}),
    [](const ::testing::TestParamInfo<Bad>& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace nbdtunnel::engine
