// engine/dest_state and engine/dest_run_dir: the record of what a `dest --qmp` daemon created
// in its QEMU reads back as written, a malformed or foreign file is refused (and ignored), one
// daemon holds a run directory at a time, and a successor gets a dead one's records.
#include "engine/dest_state.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/dest_run_dir.hpp"

namespace nbdtunnel::engine {
namespace {

namespace fs = std::filesystem;

struct Scratch {
  fs::path path;
  Scratch() {
    char t[] = "/tmp/nbdtunnel-deststate-XXXXXX";
    path = ::mkdtemp(t);
  }
  ~Scratch() { fs::remove_all(path); }
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(DestState, ReadsBackWhatWasWritten) {
  DestState s;
  s.qmp = "/run/qemu/dst qmp.sock";  // a space in a path is kept
  s.migrations.push_back({"m1", "/run/nbdtunnel/.qmp-1/nbd-m1.sock", {"nbdtunnel-m1-0"}});
  s.migrations.push_back({"vm-2.disks", "", {"nbdtunnel-vm-2.disks-0", "nbdtunnel-vm-2.disks-1"}});
  const std::string text = encode_dest_state(s);
  EXPECT_EQ(text,
            "nbdtunnel-dest-state 1\n"
            "qmp /run/qemu/dst qmp.sock\n"
            "server m1 /run/nbdtunnel/.qmp-1/nbd-m1.sock\n"
            "export m1 nbdtunnel-m1-0\n"
            "export vm-2.disks nbdtunnel-vm-2.disks-0\n"
            "export vm-2.disks nbdtunnel-vm-2.disks-1\n");
  auto back = parse_dest_state(text);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, s);
  auto empty = parse_dest_state("nbdtunnel-dest-state 1\nqmp /q\n");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

TEST(DestState, RefusesWhatItDidNotWrite) {
  const std::string head = "nbdtunnel-dest-state 1\nqmp /q\n";
  for (const std::string& bad : {
           std::string(""),
           std::string("nbdtunnel-dest-state 2\n"),
           head + "export m1 nbdtunnel-m1-0",          // no end of line
           head + "export m1 someone-elses-export\n",  // not ours to remove
           head + "export m1 nbdtunnel-\n",
           head + "export ../x nbdtunnel-x\n",  // not a migration id
           head + "server m1 relative.sock\n",
           head + "server m1 /a\nserver m1 /b\n",
           head + "qmp /again\n",
           head + "unknown m1 x\n",
           head + "export m1\n",
           std::string("nbdtunnel-dest-state 1\nexport m1 nbdtunnel-m1-0\n"),  // no qmp line
           head + std::string(kMaxDestStateBytes, 'x'),
       }) {
    auto r = parse_dest_state(bad);
    EXPECT_FALSE(r) << "accepted: " << bad.substr(0, 200);
    if (!r) {
      EXPECT_FALSE(r.error().message.empty());
    }
  }
  std::string many = head;
  for (std::size_t i = 0; i <= kMaxDestStateLines; ++i) many += "export m1 nbdtunnel-m1-0\n";
  EXPECT_FALSE(parse_dest_state(many));
}

TEST(DestRunDir, OneDaemonAtATimeAndItsRecordsGoWithACleanStop) {
  Scratch s;
  const std::string path = (s.path / "run").string();
  std::string error;
  {
    DestRunDir first;
    ASSERT_TRUE(first.open(path, "/q", error)) << error;
    DestRunDir second;  // another open file description: refused like another process
    EXPECT_FALSE(second.open(path, "/q", error));
    EXPECT_NE(error.find("already serves the destination QEMU at /q"), std::string::npos) << error;
    EXPECT_NE(error.find(std::to_string(::getpid())), std::string::npos) << error;
    first.record_server("m1", path + "/nbd-m1.sock");
    first.record_export("m1", "nbdtunnel-m1-0");
    EXPECT_NE(slurp(path + "/dest.state").find("export m1 nbdtunnel-m1-0\n"), std::string::npos);
    first.forget("m1");
    EXPECT_EQ(slurp(path + "/dest.state"), "nbdtunnel-dest-state 1\nqmp /q\n");
  }
  EXPECT_FALSE(fs::exists(path)) << "a clean stop leaves its directory";
}

TEST(DestRunDir, TakesOverADeadDaemonsRecords) {
  Scratch s;
  const std::string path = (s.path / "run").string();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    DestRunDir dead;
    std::string e;
    if (!dead.open(path, "/q", e)) ::_exit(1);
    dead.record_server("m1", path + "/nbd-m1.sock");
    dead.record_export("m1", "nbdtunnel-m1-0");
    std::ofstream(path + "/nbd-m1.sock") << "";
    ::_exit(0);  // no destructor: as if killed
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  std::string error;
  {
    DestRunDir next;
    ASSERT_TRUE(next.open(path, "/q", error)) << error;
    ASSERT_EQ(next.previous().migrations.size(), 1U);
    EXPECT_EQ(next.previous().migrations[0].exports, std::vector<std::string>{"nbdtunnel-m1-0"});
    EXPECT_FALSE(fs::exists(path + "/nbd-m1.sock")) << "the dead daemon's socket stays";
    // Until cleaned, the records stay in the file: a crash now loses nothing.
    EXPECT_NE(slurp(path + "/dest.state").find("nbdtunnel-m1-0"), std::string::npos);
    // Not cleaned: they are kept for the next one.
  }
  EXPECT_TRUE(fs::exists(path + "/dest.state"));
  {
    DestRunDir other_qemu;
    ASSERT_TRUE(other_qemu.open(path, "/another", error)) << error;
    EXPECT_TRUE(other_qemu.previous().empty()) << "records of another QEMU were taken";
  }
  std::ofstream(path + "/dest.state") << "garbage\n";
  {
    DestRunDir next;
    ASSERT_TRUE(next.open(path, "/q", error)) << error;
    EXPECT_TRUE(next.previous().empty());
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(DestRunDir, DefaultPathDependsOnTheQemuOnly) {
  const std::string a = default_dest_run_dir("/run/a.qmp", true);
  EXPECT_EQ(a, default_dest_run_dir("/run/a.qmp", true));
  EXPECT_NE(a, default_dest_run_dir("/run/b.qmp", true));
  EXPECT_EQ(a.rfind("/run/nbdtunnel/.qmp-", 0), 0U) << a;
  EXPECT_NE(default_dest_run_dir("/run/a.qmp", false).find("/nbdtunnel-dest-"), std::string::npos);
}

}  // namespace
}  // namespace nbdtunnel::engine
