// The command line: help, version and bad arguments.
#include <gtest/gtest.h>

#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/temp_dir.hpp"
#include "tests/integration/harness/tunnel.hpp"

namespace nbdtunnel::testing {
namespace {

struct Run {
  std::optional<int> code;
  std::string output;
};

Run run_nbdtunnel(const TempDir& dir, std::vector<std::string> args) {
  static int counter = 0;
  args.insert(args.begin(), nbdtunnel_binary());
  Process p("nbdtunnel", std::move(args), dir.file("cli" + std::to_string(counter++) + ".log"));
  auto code = p.wait_exit(Seconds(5));
  return {code, p.log()};
}

TEST(Cli, HelpAndVersion) {
  TempDir dir;
  auto top = run_nbdtunnel(dir, {"--help"});
  EXPECT_EQ(top.code, 0) << top.output;
  EXPECT_NE(top.output.find("dest"), std::string::npos) << top.output;
  EXPECT_NE(top.output.find("source"), std::string::npos) << top.output;

  auto dest = run_nbdtunnel(dir, {"dest", "--help"});
  EXPECT_EQ(dest.code, 0) << dest.output;
  for (const char* option : {"--listen", "--target", "--handshake-timeout", "--log-level"}) {
    EXPECT_NE(dest.output.find(option), std::string::npos) << option << " in\n" << dest.output;
  }

  auto source = run_nbdtunnel(dir, {"source", "--help"});
  EXPECT_EQ(source.code, 0) << source.output;
  for (const char* option : {"--connect", "--forward", "--socket-mode", "--log-level"}) {
    EXPECT_NE(source.output.find(option), std::string::npos) << option << " in\n" << source.output;
  }

  auto version = run_nbdtunnel(dir, {"--version"});
  EXPECT_EQ(version.code, 0) << version.output;
  EXPECT_NE(version.output.find(NBDTUNNEL_VERSION), std::string::npos) << version.output;
}

TEST(Cli, BadArgumentsExit2) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  const std::vector<std::vector<std::string>> cases = {
      {"source", "--connect", "127.0.0.1:1", "--forward", "nonsense"},
      {"source", "--connect", "noport", "--forward", sock + "=nbd"},
      {"dest", "--listen", "noport", "--target", "nbd=" + sock},
      {"dest", "--listen", "127.0.0.1:0", "--target", "nonsense"},
      {"dest", "--listen", "127.0.0.1:0", "--target", "nbd=" + sock, "--frobnicate"},
      {"dest", "--listen", "127.0.0.1:0", "--target", "nbd=" + sock, "--log-level", "loud"},
      {"teleport"},
  };
  for (const auto& args : cases) {
    std::string line;
    for (const auto& a : args) line += a + " ";
    auto r = run_nbdtunnel(dir, args);
    EXPECT_EQ(r.code, 2) << "nbdtunnel " << line << "\n" << r.output;
    EXPECT_FALSE(r.output.empty()) << "nbdtunnel " << line << " exited without a message";
  }
}

// The libvirt role hands out a root-equivalent socket: never on a plain channel off loopback, and
// on loopback only when asked with --insecure. The two migrate modes exclude each other. Numbers
// are finite and in range.
TEST(Cli, LibvirtRoleAndModeRulesExit2WithTheReason) {
  TempDir dir;
  struct Case {
    std::vector<std::string> args;
    const char* says;
  };
  const std::vector<Case> cases = {
      {{"dest", "--listen", "127.0.0.1:0", "--libvirt", "--no-tls"}, "needs TLS"},
      {{"dest", "--listen", "0.0.0.0:0", "--libvirt", "--insecure"}, "--insecure is not enough"},
      {{"dest", "--listen", "127.0.0.1:0", "--target", "a=/x", "--qemu-user", "root"},
       "only with --libvirt"},
      {{"dest", "--listen", "127.0.0.1:0", "--libvirt", "--insecure", "--qemu-user",
        "no-such-user-here"},
       "no user"},
      {{"migrate", "--dest", "127.0.0.1:1", "--domain", "vm", "--source-qmp", "/x"}, "excludes"},
      {{"migrate", "--dest", "127.0.0.1:1", "--domain", "vm", "--disk", "vda"}, "--migrate-disks"},
      {{"migrate", "--dest", "127.0.0.1:1", "--domain", "vm", "--finish", "sync"},
       "--source-qmp only"},
      {{"migrate", "--dest", "127.0.0.1:1", "--domain", "vm", "--migrate-disks", "vda,../x"},
       "not a disk target"},
      {{"migrate", "--dest", "127.0.0.1:1", "--domain", "vm", "--xml", dir.file("none.xml")},
       "cannot read"},
      {{"migrate", "--dest", "127.0.0.1:1"}, "--source-qmp"},
      {{"migrate", "--dest", "127.0.0.1:1", "--domain", "vm", "--bandwidth", "nan"},
       "'nan' is not a number"},
      {{"migrate", "--dest", "127.0.0.1:1", "--domain", "vm", "--bandwidth", "1e-9"},
       "libvirt mode takes whole MiB/s"},
      {{"dest", "--listen", "127.0.0.1:0", "--target", "a=/x", "--idle-timeout", "inf"},
       "'inf' is not a number"},
      {{"dest", "--listen", "127.0.0.1:0", "--target", "a=/x", "--handshake-timeout", "0"},
       "0 is not between 0.1 and 3600"},
      {{"migrate", "--dest", "127.0.0.1:1", "--source-qmp", "/x"}, "--disk"},
  };
  for (const auto& c : cases) {
    std::string line;
    for (const auto& a : c.args) line += a + " ";
    auto r = run_nbdtunnel(dir, c.args);
    EXPECT_EQ(r.code, 2) << "nbdtunnel " << line << "\n" << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos)
        << "nbdtunnel " << line << " should say '" << c.says << "':\n"
        << r.output;
  }
}

}  // namespace
}  // namespace nbdtunnel::testing
