#include "tunnel/protocol.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::tunnel {
namespace {

using Bytes = std::vector<std::uint8_t>;

TEST(Protocol, GoldenOpenTunnelBody) {
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{"disk0", 0});
  const Bytes expected = {
      0,   0,   0,   5,                  // target: string length 5
      'd', 'i', 's', 'k', '0', 0, 0, 0,  // "disk0" + 3 bytes of padding
      0,   0,   0,   0,                  // flags
  };
  EXPECT_EQ(body, expected);
  Result<OpenTunnel> o = decode_open_tunnel(body);
  ASSERT_TRUE(o.ok()) << o.error().message;
  EXPECT_EQ(o->target, "disk0");
}

TEST(Protocol, GoldenRemoteErrorBody) {
  Bytes body;
  encode_remote_error(body, make_error(ErrorCode::unknown_target, "no"));
  const Bytes expected = {
      0,   0,   0,    4,     // code: unknown_target
      0,   0,   0x4e, 0x42,  // domain: "NB"
      0,   0,   0,    1,     // message: present
      0,   0,   0,    2,     //   length 2
      'n', 'o', 0,    0,     //   "no" + padding
      0,   0,   0,    2,     // level: error
      0,   0,   0,    0,     // dom: absent
      0,   0,   0,    0,     // str1: absent
      0,   0,   0,    0,     // str2: absent
      0,   0,   0,    0,     // str3: absent
      0,   0,   0,    0,     // int1
      0,   0,   0,    0,     // int2
      0,   0,   0,    0,     // net: absent
  };
  EXPECT_EQ(body, expected);
  Result<RemoteError> e = decode_remote_error(body);
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ(e->code, 4);
  EXPECT_EQ(e->message, "no");
}

TEST(Protocol, RemoteErrorWithDomainObjectDecodes) {
  // libvirt may fill `dom`; we skip it without choking.
  Bytes body = {0, 0, 0, 1, 0,   0,   0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1,  // dom present
                0, 0, 0, 2, 'v', 'm', 0, 0};
  body.insert(body.end(), 16, 0xab);      // uuid
  body.insert(body.end(), {0, 0, 0, 3});  // id
  body.insert(body.end(), 4 * 6, 0);      // str1..3 absent, int1, int2, net
  Result<RemoteError> e = decode_remote_error(body);
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ(e->code, 1);
  EXPECT_FALSE(e->message.has_value());
}

TEST(Protocol, HelloRoundTrip) {
  Hello h;
  h.host_id = "abc";
  h.hostname = "host-a";
  h.window = 1u << 20;
  h.max_payload = 256u << 10;
  Bytes body;
  encode_hello(body, h);
  Result<Hello> d = decode_hello(body);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->host_id, "abc");
  EXPECT_EQ(d->hostname, "host-a");
  EXPECT_EQ(d->window, h.window);
  EXPECT_EQ(d->max_payload, h.max_payload);
}

TEST(Protocol, HelloWithWindowOutOfRangeIsRefused) {
  Hello h;
  h.window = 1;
  h.max_payload = 1024;
  Bytes body;
  encode_hello(body, h);
  Result<Hello> d = decode_hello(body);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("window"), std::string::npos);
}

TEST(Protocol, TruncatedHelloIsRefused) {
  Hello h;
  h.window = 1u << 20;
  h.max_payload = 1024;
  Bytes body;
  encode_hello(body, h);
  for (std::size_t n = 0; n < body.size(); ++n) {
    Result<Hello> d = decode_hello(std::span(body).first(n));
    ASSERT_FALSE(d.ok()) << n;
    EXPECT_NE(d.error().message, "") << n;
  }
}

TEST(Protocol, OversizedTargetNameIsRefused) {
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{std::string(300, 'x'), 0});
  Result<OpenTunnel> o = decode_open_tunnel(body);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.error().message.find("exceeds the limit of 255"), std::string::npos);
}

TEST(Protocol, EmptyTargetNameIsRefused) {
  Bytes body;
  encode_open_tunnel(body, OpenTunnel{"", 0});
  Result<OpenTunnel> o = decode_open_tunnel(body);
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.error().message, "");
}

TEST(Protocol, CreditBodyMustBeExactlyOneWord) {
  Result<std::uint32_t> n = decode_credit(Bytes{0, 1, 0, 0});
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 65536u);
  EXPECT_FALSE(decode_credit(Bytes{0, 1, 0}).ok());
  EXPECT_FALSE(decode_credit(Bytes{0, 1, 0, 0, 0}).ok());
}

}  // namespace
}  // namespace nbdtunnel::tunnel
