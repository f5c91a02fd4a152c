// The control socket's request parser: what a line asks for, and the reply to a line that asks
// nothing valid.
#include "engine/control_command.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::engine {
namespace {

using json = nlohmann::json;

TEST(ControlCommand, CommandWithArgumentsAndId) {
  ControlCommand c;
  json error;
  ASSERT_TRUE(
      parse_control_command(R"({"execute":"cancel","arguments":{"force":true},"id":7})", c, error));
  EXPECT_EQ(c.command, "cancel");
  EXPECT_EQ(c.arguments, json({{"force", true}}));
  ASSERT_TRUE(c.id);
  EXPECT_EQ(*c.id, 7);
}

TEST(ControlCommand, ArgumentsAndIdAreOptional) {
  ControlCommand c;
  json error;
  ASSERT_TRUE(parse_control_command(R"({"execute":"query-migration"})", c, error));
  EXPECT_EQ(c.command, "query-migration");
  EXPECT_EQ(c.arguments, json::object());
  EXPECT_FALSE(c.id);
}

TEST(ControlCommand, MalformedLinesGetGenericError) {
  for (const char* bad : {"this is not json", "[1,2]", R"({"arguments":{},"id":3})",
                          R"({"execute":5})", R"({"execute":"cancel","arguments":[1]})", ""}) {
    ControlCommand c;
    json error;
    EXPECT_FALSE(parse_control_command(bad, c, error)) << bad;
    EXPECT_EQ(error["error"]["class"], "GenericError") << bad;
    EXPECT_FALSE(error["error"]["desc"].get<std::string>().empty()) << bad;
  }
}

// Found by fuzz/control_command_fuzz.cpp: nlohmann::json throws out_of_range, not parse_error,
// for a number out of a double's range; it escaped the parser and ended the client's coroutine
// without a reply.
TEST(ControlCommand, NumberOutOfRangeGetsGenericError) {
  for (const char* bad : {R"({"execute":"x","id":1.5e700})", "1e999", R"({"execute":-1e400})"}) {
    ControlCommand c;
    json error;
    EXPECT_FALSE(parse_control_command(bad, c, error)) << bad;
    EXPECT_EQ(error["error"]["class"], "GenericError") << bad;
  }
}

TEST(ControlCommand, IdIsKeptForTheErrorReply) {
  ControlCommand c;
  json error;
  EXPECT_FALSE(parse_control_command(R"({"arguments":{},"id":"x"})", c, error));
  ASSERT_TRUE(c.id);
  EXPECT_EQ(*c.id, "x");
}

// Found by fuzzing: an id nested thousands of levels deep overflowed the stack when the reply
// echoing it was serialised. Nesting is bounded before parsing; brackets in strings are text.
TEST(ControlCommand, DeepNestingIsRefused) {
  ControlCommand c;
  json error;
  const std::string deep =
      R"({"execute":"cancel","id":)" + std::string(10000, '[') + std::string(10000, ']') + "}";
  EXPECT_FALSE(parse_control_command(deep, c, error));
  EXPECT_NE(error["error"]["desc"].get<std::string>().find("levels deep"), std::string::npos);
  ControlCommand ok;
  const std::string brackets = R"({"execute":"cancel","id":")" + std::string(100, '[') + R"("})";
  EXPECT_TRUE(parse_control_command(brackets, ok, error));
  ControlCommand nested;
  const std::string fine = R"({"execute":"cancel","arguments":{"a":[[[1]]]}})";
  EXPECT_TRUE(parse_control_command(fine, nested, error));
}

}  // namespace
}  // namespace nbdtunnel::engine
