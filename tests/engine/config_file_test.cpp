// engine/config_file.*: --config for a command, through CLI11's parser as `nbdtunnel` uses it.
#include "engine/config_file.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace nbdtunnel::engine {
namespace {

// A command line like `nbdtunnel dest`'s, in miniature.
struct Cli {
  CLI::App app{"test"};
  CLI::App* dest = nullptr;
  CLI::App* source = nullptr;
  std::string listen;
  std::vector<std::string> targets;
  unsigned threads = 1;
  bool insecure = false;
  std::string connect;

  Cli() {
    app.require_subcommand(1);
    dest = app.add_subcommand("dest");
    dest->add_option("--listen", listen)->required();
    dest->add_option("--target", targets);
    dest->add_option("--threads", threads)->check(CLI::Range(1u, 64u));
    dest->add_flag("--insecure", insecure);
    source = app.add_subcommand("source");
    source->add_option("--connect", connect)->required();
    add_config_option(app, {dest, source});
  }

  // The parse error's message, or "" when the command line parsed.
  std::string parse(std::vector<std::string> args) {
    std::vector<const char*> argv{"nbdtunnel"};
    for (const auto& a : args) argv.push_back(a.c_str());
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
      return e.what();
    }
    return "";
  }
};

class ConfigFile : public ::testing::Test {
 protected:
  std::string write(const std::string& text) {
    std::ofstream(path_) << text;
    return path_;
  }
  void TearDown() override { ::unlink(path_.c_str()); }

 private:
  std::string path_ = ::testing::TempDir() + "config_file_test." + std::to_string(::getpid());
};

TEST_F(ConfigFile, KeysAreTheLongOptionsAndFillRequiredOnes) {
  Cli cli;
  const std::string path = write(
      "# a comment\n"
      "listen = \"0.0.0.0:49152\"\n"
      "target = [\"nbd=/run/a.sock\", \"mem=/run/b.sock\"]\n"
      "threads = 2\n"
      "insecure = true\n");
  EXPECT_EQ(cli.parse({"dest", "--config", path}), "");
  EXPECT_EQ(cli.listen, "0.0.0.0:49152");
  EXPECT_EQ(cli.targets, (std::vector<std::string>{"nbd=/run/a.sock", "mem=/run/b.sock"}));
  EXPECT_EQ(cli.threads, 2u);
  EXPECT_TRUE(cli.insecure);
}

TEST_F(ConfigFile, RepeatedLinesOfARepeatableOptionAddUp) {
  Cli cli;
  const std::string path = write("listen = 127.0.0.1:1\ntarget = a=/x\ntarget = b=/y\n");
  EXPECT_EQ(cli.parse({"dest", "--config", path}), "");
  EXPECT_EQ(cli.targets, (std::vector<std::string>{"a=/x", "b=/y"}));
}

TEST_F(ConfigFile, TheCommandLineWins) {
  Cli cli;
  const std::string path =
      write("listen = 127.0.0.1:1\ntarget = [\"a=/x\", \"b=/y\"]\nthreads = 2\n");
  EXPECT_EQ(cli.parse({"dest", "--threads", "4", "--config", path, "--target", "c=/z"}), "");
  EXPECT_EQ(cli.threads, 4u);
  EXPECT_EQ(cli.targets, (std::vector<std::string>{"c=/z"}));
  EXPECT_EQ(cli.listen, "127.0.0.1:1");
}

TEST_F(ConfigFile, AnUnknownKeyIsRefusedWithItsLine) {
  Cli cli;
  const std::string path = write("listen = 127.0.0.1:1\n\n  lisen = 127.0.0.1:2\n");
  const std::string error = cli.parse({"dest", "--config", path});
  EXPECT_NE(error.find(path + " line 3: unknown key 'lisen'"), std::string::npos) << error;
  EXPECT_NE(error.find("nbdtunnel dest --help"), std::string::npos) << error;
}

TEST_F(ConfigFile, AnotherCommandsKeyIsUnknown) {
  Cli cli;
  const std::string path = write("connect = 127.0.0.1:1\nlisten = 127.0.0.1:1\n");
  const std::string error = cli.parse({"source", "--config", path});
  EXPECT_NE(error.find("line 2: unknown key 'listen'"), std::string::npos) << error;
}

TEST_F(ConfigFile, ASingleValuedKeyGivenTwiceIsRefusedWithBothLines) {
  Cli cli;
  const std::string path = write("listen = 127.0.0.1:1\nthreads = 2\nthreads = 3\n");
  const std::string error = cli.parse({"dest", "--config", path});
  EXPECT_NE(error.find("line 3: 'threads' takes one value (first given on line 2)"),
            std::string::npos)
      << error;
}

TEST_F(ConfigFile, SectionsAreRefused) {
  Cli cli;
  const std::string path = write("[dest]\nlisten = 127.0.0.1:1\n");
  const std::string error = cli.parse({"dest", "--config", path});
  EXPECT_NE(error.find("line 1: [section] headers are not used"), std::string::npos) << error;
}

TEST_F(ConfigFile, ABadValueIsRefusedByTheOptionsOwnCheck) {
  Cli cli;
  const std::string path = write("listen = 127.0.0.1:1\nthreads = 99\n");
  const std::string error = cli.parse({"dest", "--config", path});
  EXPECT_NE(error.find("--threads"), std::string::npos) << error;
}

TEST_F(ConfigFile, AMissingFileIsAnError) {
  Cli cli;
  const std::string error = cli.parse({"dest", "--config", "/nonexistent/dest.conf"});
  EXPECT_NE(error.find("/nonexistent/dest.conf"), std::string::npos) << error;
}

TEST_F(ConfigFile, TheKeyConfigItselfIsUnknown) {
  Cli cli;
  const std::string path = write("listen = 127.0.0.1:1\nconfig = /etc/other.conf\n");
  const std::string error = cli.parse({"dest", "--config", path});
  EXPECT_NE(error.find("line 2: unknown key 'config'"), std::string::npos) << error;
}

}  // namespace
}  // namespace nbdtunnel::engine
