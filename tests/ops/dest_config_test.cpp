// `nbdtunnel dest --config` and `source --config` with the real binary: a file that works, the
// command line over the file, and the errors an operator sees.
#include <gtest/gtest.h>

#include "tests/integration/harness/tunnel.hpp"
#include "tests/ops/ops_tools.hpp"

namespace nbdtunnel::testing {
namespace {

TEST(DestConfig, DestAndSourceRunFromConfigFilesAndTheCommandLineWins) {
  TempDir dir;
  write_file(dir.file("dest.conf"), "listen = \"127.0.0.1:1\"\ntarget = [\"nbd=" +
                                        dir.file("nbd.sock") + "\"]\nlog-level = \"debug\"\n");
  // --listen on the command line replaces the file's (port 1 would not be usable).
  auto dest = start_dest(dir, {}, {"--config", dir.file("dest.conf")});
  EXPECT_TRUE(dest.process.wait_for_log("target 'nbd' is " + regex_escape(dir.file("nbd.sock")),
                                        Seconds(5)));
  write_file(dir.file("source.conf"), "connect = \"127.0.0.1:" + std::to_string(dest.port) +
                                          "\"\nforward = [\"" + dir.file("s.sock") + "=nbd\"]\n");
  Process source("source", {nbdtunnel_binary(), "source", "--config", dir.file("source.conf")},
                 dir.file("source.log"));
  EXPECT_TRUE(source.wait_for_log("channel connected to", Seconds(10))) << source.log();
}

TEST(DestConfig, AnUnknownKeyStopsTheDaemonNamingFileLineAndKey) {
  TempDir dir;
  write_file(dir.file("dest.conf"), "listen = \"127.0.0.1:0\"\n# targets\ntargets = [\"a=/x\"]\n");
  const auto r =
      capture(dir, "dest", {nbdtunnel_binary(), "dest", "--config", dir.file("dest.conf")});
  EXPECT_EQ(r.exit, 2);
  EXPECT_NE(r.output.find(dir.file("dest.conf") + " line 3: unknown key 'targets'"),
            std::string::npos)
      << r.output;
}

TEST(DestConfig, AMissingFileIsAUsageError) {
  TempDir dir;
  const auto r =
      capture(dir, "dest", {nbdtunnel_binary(), "dest", "--config", dir.file("missing.conf")});
  EXPECT_EQ(r.exit, 2);
  EXPECT_NE(r.output.find(dir.file("missing.conf")), std::string::npos) << r.output;
}

}  // namespace
}  // namespace nbdtunnel::testing
