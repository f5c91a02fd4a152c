#include "tunnel/packet.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::tunnel {
namespace {

using Bytes = std::vector<std::uint8_t>;

// Golden bytes: a STREAM data packet of serial 7 carrying "hi", field by field.
const Bytes kStreamHi = {
    0x00, 0x00, 0x00, 0x1e,  // length: 30 = 4 + 24 + 2 (stream payload is raw, not XDR)
    0x4e, 0x42, 0x54, 0x55,  // program: "NBTU"
    0x00, 0x00, 0x00, 0x01,  // version 1
    0x00, 0x00, 0x00, 0x02,  // procedure 2: DOMAIN_MIGRATE_OPEN_TUNNEL
    0x00, 0x00, 0x00, 0x03,  // type 3: STREAM
    0x00, 0x00, 0x00, 0x07,  // serial 7: the OPEN_TUNNEL call's serial
    0x00, 0x00, 0x00, 0x02,  // status 2: CONTINUE
    'h',  'i',               // payload
};

PacketHeader stream_header(std::uint32_t serial) {
  return PacketHeader{0, kProgram, kProgramVersion, 2, 3, serial, 2};
}

TEST(Packet, GoldenStreamPacket) {
  const Bytes body = {'h', 'i'};
  EXPECT_EQ(make_packet(stream_header(7), body), kStreamHi);
}

TEST(Packet, DecodeGoldenStreamPacket) {
  Result<std::optional<Frame>> d = decode_packet(kStreamHi);
  ASSERT_TRUE(d && *d);
  const Frame& r = **d;
  EXPECT_EQ(r.consumed, kStreamHi.size());
  EXPECT_EQ(r.header.length, kStreamHi.size());
  EXPECT_EQ(r.header.program, kProgram);
  EXPECT_EQ(r.header.procedure, 2u);
  EXPECT_EQ(r.header.type, 3u);
  EXPECT_EQ(r.header.serial, 7u);
  EXPECT_EQ(r.header.status, 2u);
  EXPECT_EQ(Bytes(r.body.begin(), r.body.end()), (Bytes{'h', 'i'}));
}

TEST(Packet, GoldenKeepalivePing) {
  // libvirt's keepalive program: "keep", version 1, PING = 1, MESSAGE, serial 0, OK, no body.
  const Bytes expected = {0, 0, 0, 0x1c, 0x6b, 0x65, 0x65, 0x70, 0, 0, 0, 1, 0, 0,
                          0, 1, 0, 0,    0,    2,    0,    0,    0, 0, 0, 0, 0, 0};
  EXPECT_EQ(make_packet(PacketHeader{0, kKeepaliveProgram, 1, 1, 2, 0, 0}), expected);
}

TEST(Packet, ShortInputNeedsMore) {
  for (std::size_t n = 0; n < kStreamHi.size(); ++n) {
    Result<std::optional<Frame>> r = decode_packet(std::span(kStreamHi).first(n));
    ASSERT_TRUE(r) << "prefix of " << n << " bytes";
    EXPECT_FALSE(*r) << "prefix of " << n << " bytes";
  }
}

TEST(Packet, LengthBelowHeaderIsAnError) {
  Bytes p = kStreamHi;
  p[3] = 27;
  Result<std::optional<Frame>> r = decode_packet(p);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("shorter than the 28-byte minimum"), std::string::npos);
  EXPECT_EQ(r.error().code, std::errc::bad_message);
}

TEST(Packet, LengthOverLimitIsAnErrorBeforeTheBodyArrives) {
  const Bytes p = {0x10, 0, 0, 0};  // 256 MiB announced, 4 bytes present
  Result<std::optional<Frame>> r = decode_packet(p);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("exceeds the limit"), std::string::npos);
}

TEST(Packet, TwoPacketsBackToBackDecodeOneAtATime) {
  Bytes two = kStreamHi;
  two.insert(two.end(), kStreamHi.begin(), kStreamHi.end());
  Result<std::optional<Frame>> r = decode_packet(two);
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->consumed, kStreamHi.size());
  Result<std::optional<Frame>> r2 = decode_packet(std::span(two).subspan((*r)->consumed));
  ASSERT_TRUE(r2 && *r2);
  EXPECT_EQ((*r2)->consumed, kStreamHi.size());
}

TEST(Packet, UnknownTypeAndStatusAreReported) {
  PacketHeader h = stream_header(1);
  EXPECT_TRUE(check_header(h));
  h.type = 9;
  Status bad_type = check_header(h);
  ASSERT_FALSE(bad_type);
  EXPECT_NE(bad_type.error().message.find("unknown packet type 9"), std::string::npos);
  h = stream_header(1);
  h.status = 3;
  Status bad_status = check_header(h);
  ASSERT_FALSE(bad_status);
  EXPECT_NE(bad_status.error().message.find("unknown packet status 3"), std::string::npos);
}

TEST(Packet, RandomBytesNeverCrash) {
  // Cheap fuzz: any input is a frame, need-more or a clean error; never a read past the end.
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 20000; ++i) {
    Bytes in(static_cast<std::size_t>(i % 64));
    for (auto& b : in) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      b = static_cast<std::uint8_t>(x);
    }
    if (in.size() >= 4 && (i & 1)) in[0] = in[1] = 0;  // make small lengths likely
    Result<std::optional<Frame>> r = decode_packet(in);
    if (r && *r) {
      EXPECT_LE((*r)->consumed, in.size());
      EXPECT_EQ((*r)->body.size() + kPrefixSize, (*r)->consumed);
    }
  }
}

}  // namespace
}  // namespace nbdtunnel::tunnel
