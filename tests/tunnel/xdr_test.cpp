#include "tunnel/xdr.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::tunnel {
namespace {

TEST(Xdr, IntegersAreBigEndian) {
  std::vector<std::uint8_t> out;
  XdrWriter w(out);
  w.u32(0x01020304);
  w.i32(-2);
  w.u64(0x0102030405060708ull);
  const std::vector<std::uint8_t> expected = {1, 2, 3, 4, 0xff, 0xff, 0xff, 0xfe,
                                              1, 2, 3, 4, 5,    6,    7,    8};
  EXPECT_EQ(out, expected);
  XdrReader r(out);
  EXPECT_EQ(r.u32(), 0x01020304u);
  EXPECT_EQ(r.i32(), -2);
  EXPECT_EQ(r.u64(), 0x0102030405060708ull);
  EXPECT_TRUE(r.finish("test"));
}

TEST(Xdr, StringIsLengthPrefixedAndPaddedToFour) {
  std::vector<std::uint8_t> out;
  XdrWriter(out).string("abcde");
  const std::vector<std::uint8_t> expected = {0, 0, 0, 5, 'a', 'b', 'c', 'd', 'e', 0, 0, 0};
  EXPECT_EQ(out, expected);
  XdrReader r(out);
  EXPECT_EQ(r.string(16), "abcde");
  EXPECT_TRUE(r.finish("test"));
}

TEST(Xdr, TruncatedIntegerIsAnError) {
  const std::vector<std::uint8_t> in = {0, 0, 1};
  XdrReader r(in);
  EXPECT_EQ(r.u32(), 0u);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("truncated"), std::string::npos);
}

TEST(Xdr, TruncatedStringIsAnError) {
  const std::vector<std::uint8_t> in = {0, 0, 0, 8, 'a', 'b'};
  XdrReader r(in);
  r.string(100);
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("truncated"), std::string::npos);
}

TEST(Xdr, OversizedStringIsRefusedBeforeReading) {
  // A length of 4 GiB must not allocate anything.
  const std::vector<std::uint8_t> in = {0xff, 0xff, 0xff, 0xff, 'a'};
  XdrReader r(in);
  EXPECT_EQ(r.string(255), "");
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("exceeds the limit of 255"), std::string::npos);
}

TEST(Xdr, MissingPaddingIsTruncation) {
  const std::vector<std::uint8_t> in = {0, 0, 0, 1, 'a'};
  XdrReader r(in);
  r.string(10);
  EXPECT_FALSE(r.ok());
}

TEST(Xdr, OptionalFlagMustBeZeroOrOne) {
  const std::vector<std::uint8_t> in = {0, 0, 0, 2};
  XdrReader r(in);
  EXPECT_FALSE(r.optional_string(10).has_value());
  EXPECT_FALSE(r.ok());
}

TEST(Xdr, TrailingBytesFailFinish) {
  const std::vector<std::uint8_t> in = {0, 0, 0, 1, 9};
  XdrReader r(in);
  r.u32();
  EXPECT_FALSE(r.finish("body"));
  EXPECT_NE(r.error().message.find("trailing"), std::string::npos);
}

TEST(Xdr, FirstErrorSticks) {
  const std::vector<std::uint8_t> in = {0, 0};
  XdrReader r(in);
  r.u32();
  const std::string first = r.error().message;
  r.string(1);
  r.u64();
  EXPECT_EQ(r.error().message, first);
}

// Found by fuzz/xdr_fuzz.cpp (UBSan): a zero-length opaque passed a null pointer to memcpy.
TEST(Xdr, ZeroLengthOpaqueReadsNothing) {
  const std::vector<std::uint8_t> in = {0, 0, 0, 7};
  XdrReader r(in);
  r.fixed_opaque(std::span<std::uint8_t>{});
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.u32(), 7u);
  EXPECT_TRUE(r.finish("test"));
}

}  // namespace
}  // namespace nbdtunnel::tunnel
