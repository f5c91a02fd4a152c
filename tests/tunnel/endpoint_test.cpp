// parse_endpoint: the forms it takes, the ones it refuses, and that to_string() parses back.
#include "tunnel/endpoint.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::tunnel {
namespace {

TEST(Endpoint, HostAndPort) {
  Result<Endpoint> ep = parse_endpoint("127.0.0.1:10809");
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  EXPECT_EQ(ep->host, "127.0.0.1");
  EXPECT_EQ(ep->port, 10809);
  EXPECT_EQ(ep->to_string(), "127.0.0.1:10809");
}

TEST(Endpoint, BracketedIpv6) {
  Result<Endpoint> ep = parse_endpoint("[::1]:0");
  ASSERT_TRUE(ep.ok()) << ep.error().message;
  EXPECT_EQ(ep->host, "::1");
  EXPECT_EQ(ep->port, 0);
  EXPECT_EQ(ep->to_string(), "[::1]:0");
}

TEST(Endpoint, MalformedIsRefused) {
  for (const char* bad : {"", "noport", "host:", ":80", "host:65536", "host:8x", "::1:80", "[::1]",
                          "[::1]80", "[]:80"}) {
    Result<Endpoint> ep = parse_endpoint(bad);
    ASSERT_FALSE(ep.ok()) << bad;
    EXPECT_EQ(ep.error().code, std::make_error_code(std::errc::invalid_argument)) << bad;
  }
}

// Found by fuzz/endpoint_fuzz.cpp: "[[3]:0" gave host "[3", which to_string() wrote as "[3:0",
// which does not parse.
TEST(Endpoint, StrayBracketInHostIsRefused) {
  for (const char* bad : {"[[3]:0", "a]:80", "a[b:80", "[a[b]:1"}) {
    EXPECT_FALSE(parse_endpoint(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace nbdtunnel::tunnel
