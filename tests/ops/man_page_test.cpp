// docs/nbdtunnel.1 stays in step with the program: every long option that `nbdtunnel --help` and
// `nbdtunnel COMMAND --help` print is in the page, every command has its section, and groff
// renders the page without a warning.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/ops/ops_tools.hpp"

namespace nbdtunnel::testing {
namespace {

const std::string kPage = std::string(NBDTUNNEL_SOURCE_DIR) + "/docs/nbdtunnel.1";
const std::vector<std::string> kCommands = {"dest", "source", "migrate", "status"};

// The page's text with roff's escapes for '-' and fonts taken out, as a reader sees it.
std::string page_text() {
  std::string text = read_file(kPage);
  text = std::regex_replace(text, std::regex(R"(\\-)"), "-");
  text = std::regex_replace(text, std::regex(R"(\\f[BIRP])"), "");
  text = std::regex_replace(text, std::regex(R"(\\f\[[A-Z]*\])"), "");
  return text;
}

// The long options a --help output lists (at the start of a line, as CLI11 prints them).
std::set<std::string> options_in_help(const std::string& help) {
  std::set<std::string> out;
  const std::regex option_re(R"((?:^|\n)\s+(?:-[a-zA-Z],)?(--[a-z][a-z0-9-]*))");
  for (auto it = std::sregex_iterator(help.begin(), help.end(), option_re);
       it != std::sregex_iterator(); ++it) {
    out.insert((*it)[1]);
  }
  return out;
}

// Whether the page mentions option as a whole word (--tls-dir is not --tls-dir-x).
bool mentions(const std::string& text, const std::string& option) {
  const std::regex re("(^|[^a-z0-9-])" + option + "([^a-z0-9-]|$)");
  return std::regex_search(text, re);
}

TEST(ManPage, EveryOptionOfEveryCommandIsDescribed) {
  TempDir dir;
  const std::string text = page_text();
  ASSERT_FALSE(text.empty()) << kPage;
  std::vector<std::string> commands{""};
  commands.insert(commands.end(), kCommands.begin(), kCommands.end());
  std::size_t checked = 0;
  for (const std::string& command : commands) {
    std::vector<std::string> argv{nbdtunnel_binary()};
    if (!command.empty()) argv.push_back(command);
    argv.push_back("--help");
    const auto help = capture(dir, "help-" + command, argv);
    ASSERT_EQ(help.exit, 0) << help.output;
    const std::set<std::string> options = options_in_help(help.output);
    EXPECT_GE(options.size(), command.empty() ? 2u : 3u) << help.output;
    for (const std::string& option : options) {
      ++checked;
      EXPECT_TRUE(mentions(text, option))
          << "nbdtunnel " << command << " " << option << " is not in docs/nbdtunnel.1";
    }
  }
  EXPECT_GT(checked, 60u);
}

TEST(ManPage, HasASectionPerCommandAndTheUsualOnes) {
  const std::string text = read_file(kPage);
  for (const std::string& command : kCommands) {
    EXPECT_NE(text.find(".SS \"nbdtunnel " + command), std::string::npos) << command;
  }
  for (const char* section :
       {".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS", ".SH \"EXIT STATUS\"",
        ".SH FILES", ".SH SECURITY", ".SH EXAMPLES", ".SH \"SEE ALSO\""}) {
    EXPECT_NE(text.find(section), std::string::npos) << section;
  }
}

TEST(ManPage, RendersWithoutWarnings) {
  NBDTUNNEL_REQUIRE_TOOLS("groff");
  TempDir dir;
  const auto r = capture(dir, "groff", {"groff", "-man", "-Tutf8", "-ww", "-z", kPage});
  EXPECT_EQ(r.exit, 0) << r.output;
  EXPECT_EQ(r.output, "") << "groff warnings";
}

}  // namespace
}  // namespace nbdtunnel::testing
