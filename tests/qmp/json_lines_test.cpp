#include "qmp/json_lines.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace nbdtunnel::qmp {
namespace {

using Status = JsonLineSplitter::Status;

void feed(JsonLineSplitter& s, std::string_view text) {
  s.feed({text.data(), text.size()});
}

TEST(JsonLineSplitter, EmptyInputNeedsMore) {
  JsonLineSplitter s;
  EXPECT_EQ(s.next().status, Status::need_more);
}

TEST(JsonLineSplitter, SplitsSeveralLinesFromOneFeed) {
  JsonLineSplitter s;
  feed(s, "{\"a\":1}\n{\"b\":2}\n{\"c\"");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "{\"a\":1}");
  r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "{\"b\":2}");
  EXPECT_EQ(s.next().status, Status::need_more);
  EXPECT_EQ(s.buffered(), 4u);
}

TEST(JsonLineSplitter, NoNewlineNeedsMore) {
  JsonLineSplitter s;
  feed(s, "{\"QMP\": {}}");
  EXPECT_EQ(s.next().status, Status::need_more);
  EXPECT_EQ(s.next().status, Status::need_more);
  EXPECT_EQ(s.buffered(), 11u);
}

TEST(JsonLineSplitter, LineSplitAcrossFeeds) {
  JsonLineSplitter s;
  feed(s, "{\"ret");
  EXPECT_EQ(s.next().status, Status::need_more);
  feed(s, "urn\": ");
  EXPECT_EQ(s.next().status, Status::need_more);
  feed(s, "{}}\n{\"x\"");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "{\"return\": {}}");
  EXPECT_EQ(s.next().status, Status::need_more);
}

TEST(JsonLineSplitter, StripsCrLf) {
  JsonLineSplitter s;
  feed(s, "{\"a\":1}\r\n{\"b\":2}\r");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "{\"a\":1}");
  EXPECT_EQ(s.next().status, Status::need_more);
  feed(s, "\n");
  r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "{\"b\":2}");
}

TEST(JsonLineSplitter, CrLfSplitBetweenFeeds) {
  JsonLineSplitter s;
  feed(s, "{}\r");
  EXPECT_EQ(s.next().status, Status::need_more);
  feed(s, "\n");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "{}");
}

TEST(JsonLineSplitter, SkipsBlankLines) {
  JsonLineSplitter s;
  feed(s, "\n\r\n\n{}\n");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "{}");
  EXPECT_EQ(s.next().status, Status::need_more);
}

TEST(JsonLineSplitter, OverlongLineWithoutNewlineIsError) {
  JsonLineSplitter s(16);
  feed(s, std::string(16, 'x'));
  EXPECT_EQ(s.next().status, Status::need_more);  // exactly at the limit is still fine
  feed(s, "y");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::error);
  EXPECT_NE(r.text.find("16 byte limit"), std::string::npos) << r.text;
}

TEST(JsonLineSplitter, OverlongCompleteLineIsError) {
  JsonLineSplitter s(8);
  feed(s, "{}\n0123456789\n{}\n");
  EXPECT_EQ(s.next().status, Status::line);
  auto r = s.next();
  ASSERT_EQ(r.status, Status::error);
  EXPECT_NE(r.text.find("exceeds the 8 byte limit"), std::string::npos) << r.text;
}

TEST(JsonLineSplitter, LineAtLimitWithCrLfIsAccepted) {
  JsonLineSplitter s(4);
  feed(s, "abcd\r\n");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::line);
  EXPECT_EQ(r.text, "abcd");
}

// Found by fuzz/json_lines_fuzz.cpp: how TCP cuts the bytes must not decide whether a line fits.
TEST(JsonLineSplitter, LineAtLimitWithCrLfSplitBeforeNewlineIsAccepted) {
  JsonLineSplitter s(4);
  feed(s, "abcd\r");
  EXPECT_EQ(s.next().status, Status::need_more);
  feed(s, "\n");
  auto r = s.next();
  ASSERT_EQ(r.status, Status::line) << r.text;
  EXPECT_EQ(r.text, "abcd");
}

TEST(JsonLineSplitter, LineOverLimitIsErrorBeforeItsNewline) {
  JsonLineSplitter s(4);
  feed(s, "abcde");
  EXPECT_EQ(s.next().status, Status::error);
}

TEST(JsonLineSplitter, ErrorIsStickyUntilReset) {
  JsonLineSplitter s(4);
  feed(s, "0123456789");
  EXPECT_EQ(s.next().status, Status::error);
  feed(s, "{}\n");
  EXPECT_EQ(s.next().status, Status::error);
  EXPECT_EQ(s.buffered(), 0u);
  s.reset();
  feed(s, "{}\n");
  EXPECT_EQ(s.next().status, Status::line);
}

TEST(JsonLineSplitter, ManySmallLinesByteByByte) {
  JsonLineSplitter s;
  const std::string text = "{\"n\":1}\n";
  int lines = 0;
  for (int i = 0; i < 1000; ++i) {
    for (char c : text) {
      s.feed({&c, 1});
      while (true) {
        auto r = s.next();
        if (r.status != Status::line) break;
        EXPECT_EQ(r.text, "{\"n\":1}");
        ++lines;
      }
    }
  }
  EXPECT_EQ(lines, 1000);
  EXPECT_EQ(s.buffered(), 0u);
}

}  // namespace
}  // namespace nbdtunnel::qmp
