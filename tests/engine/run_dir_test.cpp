// engine/run_dir and inspect_image: a migration's rendezvous directory is created private,
// replaces what a dead run left and goes with everything in it; destination images are sized as
// QEMU sees them (qcow2 by its header).
#include "engine/run_dir.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/dest_libvirt.hpp"

namespace nbdtunnel::engine {
namespace {

namespace fs = std::filesystem;

struct Scratch {
  fs::path path;
  Scratch() {
    char t[] = "/tmp/nbdtunnel-rundir-XXXXXX";
    path = ::mkdtemp(t);
  }
  ~Scratch() { fs::remove_all(path); }
};

TEST(RunDir, IsPrivateAndGoesWithItsContents) {
  Scratch s;
  const std::string base = (s.path / "run").string();
  std::string error;
  {
    RunDir dir;
    ASSERT_TRUE(dir.create(base, "m1", FileOwner{}, error)) << error;
    EXPECT_EQ(dir.path(), base + "/m1");
    EXPECT_EQ(dir.socket("nbd"), base + "/m1/nbd.sock");
    struct stat st {};
    ASSERT_EQ(::stat(dir.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    std::ofstream(dir.path() + "/left-by-qemu") << "x";
  }
  EXPECT_FALSE(fs::exists(base + "/m1"));
  EXPECT_TRUE(fs::exists(base)) << "the base directory stays";
}

TEST(RunDir, ReplacesWhatADeadRunLeft) {
  Scratch s;
  const std::string base = s.path.string();
  fs::create_directory(base + "/m2");
  std::ofstream(base + "/m2/stale.sock") << "x";
  RunDir dir;
  std::string error;
  ASSERT_TRUE(dir.create(base, "m2", FileOwner{}, error)) << error;
  EXPECT_FALSE(fs::exists(base + "/m2/stale.sock"));
}

TEST(RunDir, SaysWhyItCannotCreate) {
  RunDir dir;
  std::string error;
  EXPECT_FALSE(dir.create("/proc/nonexistent/run", "m", FileOwner{}, error));
  EXPECT_NE(error.find("/proc/nonexistent/run"), std::string::npos) << error;
}

// A process killed with its migration prepared leaves its directory, no longer held: the next
// sweep removes it, and only it.
TEST(RunDir, SweepRemovesOnlyDirectoriesNoLiveProcessHolds) {
  Scratch s;
  const std::string base = (s.path / "run").string();
  std::string error;
  RunDir live;
  ASSERT_TRUE(live.create(base, "live", FileOwner{}, error)) << error;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    RunDir dead;
    std::string e;
    ::_exit(dead.create(base, "dead", FileOwner{}, e) ? 0 : 1);  // no destructor: as if killed
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_TRUE(fs::exists(base + "/dead"));
  fs::create_directory(base + "/.qmp-0123456789abcdef");  // never a migration id
  fs::create_directory(s.path / "elsewhere");
  fs::create_directory_symlink(s.path / "elsewhere", base + "/linked");
  std::ofstream(base + "/m3") << "";

  EXPECT_EQ(RunDir::remove_abandoned(base), 1U);
  EXPECT_FALSE(fs::exists(base + "/dead"));
  EXPECT_TRUE(fs::exists(base + "/live"));
  EXPECT_TRUE(fs::exists(base + "/.qmp-0123456789abcdef"));
  EXPECT_TRUE(fs::exists(s.path / "elsewhere"));
  EXPECT_TRUE(fs::is_symlink(base + "/linked"));
  EXPECT_TRUE(fs::exists(base + "/m3"));
  // Nothing but the migration directories: no lock file in RUN_DIR or in them.
  EXPECT_FALSE(fs::exists(base + "/.lock"));
  EXPECT_TRUE(fs::is_empty(base + "/live"));

  // A migration of the same id that still runs is not replaced.
  RunDir again;
  EXPECT_FALSE(again.create(base, "live", FileOwner{}, error));
  EXPECT_NE(error.find("still running"), std::string::npos) << error;
  EXPECT_TRUE(fs::exists(base + "/live"));
}

TEST(InspectImage, SizesRawByLengthAndQcow2ByHeader) {
  Scratch s;
  const std::string raw = (s.path / "a.raw").string();
  std::ofstream(raw).close();
  fs::resize_file(raw, 3u << 20);
  DestDiskReport r = inspect_image(raw);
  EXPECT_TRUE(r.exists);
  EXPECT_TRUE(r.writable);
  EXPECT_EQ(r.size, 3u << 20);

  const std::string qcow2 = (s.path / "b.qcow2").string();
  unsigned char header[32] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
  const std::uint64_t virtual_size = 10ull << 30;
  for (int i = 0; i < 8; ++i) header[24 + i] = (virtual_size >> (56 - 8 * i)) & 0xff;
  std::ofstream(qcow2, std::ios::binary).write(reinterpret_cast<const char*>(header), 32);
  EXPECT_EQ(inspect_image(qcow2).size, virtual_size);

  EXPECT_FALSE(inspect_image((s.path / "missing.raw").string()).exists);
  EXPECT_FALSE(inspect_image("relative/path.raw").exists);
  EXPECT_FALSE(inspect_image(s.path.string()).exists) << "a directory is not an image";
}

}  // namespace
}  // namespace nbdtunnel::engine
