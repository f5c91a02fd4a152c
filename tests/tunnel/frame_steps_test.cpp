// FrameSteps: the splice-mode receive rules, step by step, without sockets.

#include "tunnel/frame_steps.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel {
namespace {

using Bytes = std::vector<std::uint8_t>;
using Kind = FrameSteps::Kind;
using Event = FrameSteps::Event;

PacketHeader stream_data(std::uint32_t serial) {
  return make_header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                     PacketType::stream, serial, PacketStatus::cont);
}

// The 28-byte prefix of a packet with header h and a body of n bytes.
Bytes prefix_of(PacketHeader h, std::size_t n) {
  Bytes p(kPrefixSize);
  write_prefix(p.data(), h, n);
  return p;
}

// Feeds the prefix one byte at a time; every byte but the last asks for more.
void feed_prefix(FrameSteps& steps, const Bytes& prefix) {
  for (std::size_t n = 1; n <= prefix.size(); ++n) {
    Result<Event> e = steps.on_prefix_bytes(std::span(prefix).first(n));
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(*e, n == prefix.size() ? Event::header : Event::none) << "after " << n << " bytes";
    EXPECT_EQ(steps.want(), prefix.size() - n);
  }
}

TEST(FrameSteps, StartsByAskingForAPrefix) {
  FrameSteps steps;
  EXPECT_EQ(steps.kind(), Kind::prefix);
  EXPECT_EQ(steps.want(), kPrefixSize);
}

TEST(FrameSteps, EmptyBodyIsAPacketAtOnce) {
  FrameSteps steps;
  feed_prefix(steps, prefix_of(stream_data(3), 0));
  EXPECT_EQ(steps.header().serial, 3u);
  EXPECT_EQ(steps.choose_body(true), Event::packet);
  EXPECT_EQ(steps.kind(), Kind::prefix);
  EXPECT_EQ(steps.want(), kPrefixSize);
  EXPECT_EQ(steps.header().serial, 3u);  // still readable for the packet just completed
}

TEST(FrameSteps, StreamPayloadIsSplicedWhenTheStreamCanTakeIt) {
  FrameSteps steps;
  feed_prefix(steps, prefix_of(stream_data(5), 1000));
  EXPECT_EQ(steps.choose_body(true), Event::none);
  EXPECT_EQ(steps.kind(), Kind::splice);
  EXPECT_EQ(steps.want(), 1000u);
  EXPECT_EQ(steps.on_bytes(999), Event::none);
  EXPECT_EQ(steps.want(), 1u);
  EXPECT_EQ(steps.on_bytes(1), Event::payload_done);
  EXPECT_EQ(steps.kind(), Kind::prefix);
  EXPECT_EQ(steps.want(), kPrefixSize);
}

TEST(FrameSteps, StreamPayloadIsReadAsABodyWhenTheStreamCannotTakeIt) {
  FrameSteps steps;
  feed_prefix(steps, prefix_of(stream_data(5), 10));
  EXPECT_EQ(steps.choose_body(false), Event::none);
  EXPECT_EQ(steps.kind(), Kind::body);
  EXPECT_EQ(steps.on_bytes(4), Event::none);
  EXPECT_EQ(steps.on_bytes(6), Event::packet);
  EXPECT_EQ(steps.kind(), Kind::prefix);
}

TEST(FrameSteps, ControlPacketsAreNeverSpliced) {
  const PacketHeader headers[] = {
      make_header(kProgram, static_cast<std::uint32_t>(Proc::hello), PacketType::call, 1,
                  PacketStatus::ok),
      make_header(kProgram, static_cast<std::uint32_t>(Proc::stream_credit), PacketType::message, 2,
                  PacketStatus::ok),
      // A stream ERROR carries a remote_error body, not payload.
      make_header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                  PacketType::stream, 2, PacketStatus::error),
      // Another program's STREAM CONTINUE is not ours to splice.
      make_header(0x20008086, 2, PacketType::stream, 2, PacketStatus::cont),
  };
  for (const PacketHeader& h : headers) {
    FrameSteps steps;
    feed_prefix(steps, prefix_of(h, 8));
    EXPECT_FALSE(FrameSteps::spliceable(steps.header()));
    EXPECT_EQ(steps.choose_body(true), Event::none);
    EXPECT_EQ(steps.kind(), Kind::body) << "type " << h.type << " status " << h.status;
  }
}

TEST(FrameSteps, AbandonedSpliceDiscardsTheRest) {
  FrameSteps steps;
  feed_prefix(steps, prefix_of(stream_data(5), 100));
  steps.choose_body(true);
  EXPECT_EQ(steps.on_bytes(30), Event::none);
  steps.abandon_splice();
  EXPECT_EQ(steps.kind(), Kind::discard);
  EXPECT_EQ(steps.want(), 70u);
  EXPECT_EQ(steps.on_bytes(69), Event::none);
  EXPECT_EQ(steps.on_bytes(1), Event::payload_done);
  EXPECT_EQ(steps.kind(), Kind::prefix);
}

TEST(FrameSteps, PacketsFollowOneAnother) {
  FrameSteps steps;
  for (std::uint32_t serial = 1; serial <= 3; ++serial) {
    feed_prefix(steps, prefix_of(stream_data(serial), 16));
    EXPECT_EQ(steps.header().serial, serial);
    steps.choose_body(serial % 2 == 0);
    EXPECT_NE(steps.on_bytes(16), Event::none);
    EXPECT_EQ(steps.kind(), Kind::prefix);
  }
}

// A bad length is refused as soon as its fourth byte is in, whatever pieces it came in.
TEST(FrameSteps, BadLengthIsRefusedAtTheFourthByte) {
  const std::uint32_t lengths[] = {0, 5, kPrefixSize - 1, kMaxPacket + 1, 0xffffffff};
  for (std::uint32_t length : lengths) {
    Bytes p = prefix_of(stream_data(1), 0);
    p[0] = static_cast<std::uint8_t>(length >> 24);
    p[1] = static_cast<std::uint8_t>(length >> 16);
    p[2] = static_cast<std::uint8_t>(length >> 8);
    p[3] = static_cast<std::uint8_t>(length);
    FrameSteps steps;
    for (std::size_t n = 1; n < 4; ++n) {
      Result<Event> e = steps.on_prefix_bytes(std::span(p).first(n));
      ASSERT_TRUE(e) << "length " << length << " refused after " << n << " bytes";
      EXPECT_EQ(*e, Event::none);
    }
    Result<Event> e = steps.on_prefix_bytes(std::span(p).first(4));
    ASSERT_FALSE(e) << "length " << length << " accepted";
    EXPECT_EQ(e.error().code, std::errc::bad_message);
  }
}

TEST(FrameSteps, LimitIsTheOneGiven) {
  FrameSteps small(kPrefixSize + 10);
  EXPECT_FALSE(small.on_prefix_bytes(prefix_of(stream_data(1), 11)));
  FrameSteps exact(kPrefixSize + 10);
  Result<Event> e = exact.on_prefix_bytes(prefix_of(stream_data(1), 10));
  ASSERT_TRUE(e);
  EXPECT_EQ(*e, Event::header);
  EXPECT_EQ(exact.body_size(), 10u);
}

TEST(FrameSteps, LargestPacketIsAccepted) {
  FrameSteps steps;
  feed_prefix(steps, prefix_of(stream_data(1), kMaxPacket - kPrefixSize));
  steps.choose_body(true);
  EXPECT_EQ(steps.want(), kMaxStreamPayload);
}

}  // namespace
}  // namespace nbdtunnel::tunnel
