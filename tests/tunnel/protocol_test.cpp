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

TEST(Protocol, HelloWithResumeCarriesTheTicket) {
  Hello h;
  h.window = 1u << 20;
  h.max_payload = 1024;
  h.features = kFeatureResume;
  for (std::size_t i = 0; i < h.ticket.id.size(); ++i)
    h.ticket.id[i] = static_cast<std::uint8_t>(i);
  h.ticket.secret.fill(0xab);
  h.ticket.timeout_ms = 30'000;
  Bytes body;
  encode_hello(body, h);
  Hello plain = h;
  plain.features = 0;
  Bytes plain_body;
  encode_hello(plain_body, plain);
  // The ticket follows the fixed fields: id[16], secret[32], timeout (big-endian).
  ASSERT_EQ(body.size(), plain_body.size() + 16 + 32 + 4);
  EXPECT_EQ(body[plain_body.size()], 0x00);
  EXPECT_EQ(body[plain_body.size() + 15], 0x0f);
  EXPECT_EQ(body[plain_body.size() + 16], 0xab);
  EXPECT_EQ(Bytes(body.end() - 4, body.end()), (Bytes{0x00, 0x00, 0x75, 0x30}));
  Result<Hello> d = decode_hello(body);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(*d, h);
  // Without the feature bit the ticket is not on the wire (and comes back as zeros).
  Result<Hello> p2 = decode_hello(plain_body);
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->ticket, ResumeTicket{});
}

TEST(Protocol, HelloWithAnAbsurdResumeTimeoutIsRefused) {
  Hello h;
  h.window = 1u << 20;
  h.max_payload = 1024;
  h.features = kFeatureResume;
  h.ticket.timeout_ms = kMaxResumeTimeoutMs + 1;
  Bytes body;
  encode_hello(body, h);
  EXPECT_FALSE(decode_hello(body).ok());
}

TEST(Protocol, ResumeBodiesRoundTripAndRefuseTruncation) {
  ResumeRequest q;
  q.id.fill(1);
  q.secret.fill(2);
  q.received = 0x0102030405060708ull;
  Bytes body;
  encode_resume_request(body, q);
  ASSERT_EQ(body.size(), 16u + 32u + 8u);
  EXPECT_EQ(Bytes(body.end() - 8, body.end()), (Bytes{1, 2, 3, 4, 5, 6, 7, 8}));
  Result<ResumeRequest> d = decode_resume_request(body);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, q);
  for (std::size_t n = 0; n < body.size(); ++n) {
    EXPECT_FALSE(decode_resume_request(std::span(body).first(n)).ok()) << n;
  }
  Bytes ack;
  encode_received(ack, 42);
  EXPECT_EQ(ack, (Bytes{0, 0, 0, 0, 0, 0, 0, 42}));
  EXPECT_EQ(*decode_received(ack), 42u);
  ack.push_back(0);
  EXPECT_FALSE(decode_received(ack).ok()) << "trailing bytes";
  Bytes bye;
  encode_goodbye(bye, "idle");
  EXPECT_EQ(*decode_goodbye(bye), "idle");
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
