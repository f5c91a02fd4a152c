// engine/migration_lock: a run's lock on its source QEMU says that it lives, records its pid and
// disks, refuses a second run of the same tag, and goes when the run lets go or dies.
#include "engine/migration_lock.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

namespace nbdtunnel::engine {
namespace {

namespace fs = std::filesystem;

struct Scratch {
  fs::path path;
  Scratch() {
    char t[] = "/tmp/nbdtunnel-locks-XXXXXX";
    path = ::mkdtemp(t);
  }
  ~Scratch() { fs::remove_all(path); }
};

using Take = MigrationLocks::Take;

TEST(MigrationLock, ALiveRunHoldsItsTagAndASecondOfThatTagIsRefused) {
  Scratch s;
  const std::string stem = (s.path / "migrate").string();
  MigrationLocks first(stem, "qemu"), second(stem, "qemu");
  std::string error;
  LockHolder holder;
  ASSERT_EQ(first.try_guard(error), Take::taken) << error;
  EXPECT_EQ(second.try_guard(error), Take::busy);
  ASSERT_EQ(first.take_own("first", {"disk0", "disk1"}, holder, error), Take::taken) << error;
  first.release_guard();

  ASSERT_EQ(second.try_guard(error), Take::taken) << error;
  EXPECT_EQ(second.held("first", error), true);
  EXPECT_EQ(second.held("nobody", error), false) << "a missing file is no holder";
  ASSERT_EQ(second.take_own("first", {"disk2"}, holder, error), Take::busy);
  EXPECT_EQ(holder.pid, std::to_string(::getpid()));
  EXPECT_EQ(holder.disks, (std::vector<std::string>{"disk0", "disk1"}));
  EXPECT_EQ(second.take_own("second", {"disk2"}, holder, error), Take::taken) << error;
  second.release_guard();

  ASSERT_EQ(first.try_guard(error), Take::taken) << error;
  first.release_own(true);
  first.release_guard();
  EXPECT_FALSE(fs::exists(first.path_of("first")));
  EXPECT_EQ(second.held("first", error), false);
  EXPECT_EQ(second.held("second", error), true);
}

TEST(MigrationLock, ADeadRunsLockIsFreeAndItsFileGoesWithTheNextSweep) {
  Scratch s;
  const std::string stem = (s.path / "migrate").string();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    MigrationLocks run(stem, "qemu");
    std::string error;
    LockHolder holder;
    const bool ok = run.try_guard(error) == Take::taken &&
                    run.take_own("killed", {"disk0"}, holder, error) == Take::taken;
    ::_exit(ok ? 0 : 1);  // no release: as if killed
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  MigrationLocks next(stem, "qemu");
  std::string error;
  EXPECT_TRUE(fs::exists(next.path_of("killed")));
  EXPECT_EQ(next.held("killed", error), false) << error;
  ASSERT_TRUE(next.holder("killed"));
  EXPECT_EQ(next.holder("killed")->pid, std::to_string(child));

  // A sweep takes the dead run's file, not a live run's (of another QEMU here) nor the guard.
  MigrationLocks live(stem, "another qemu");
  LockHolder holder;
  ASSERT_EQ(live.try_guard(error), Take::taken) << error;
  ASSERT_EQ(live.take_own("live", {"disk0"}, holder, error), Take::taken) << error;
  EXPECT_EQ(next.remove_unheld(), 1U);
  EXPECT_FALSE(fs::exists(next.path_of("killed")));
  EXPECT_TRUE(fs::exists(live.path_of("live")));
  EXPECT_TRUE(fs::exists(live.guard_path()));
}

TEST(MigrationLock, TheSourceQemuIsItsProcessNotItsMonitor) {
  // Two monitors of one QEMU give one key; the path stands in only when the pid is unknown.
  EXPECT_EQ(source_qemu_key(::getpid(), "/a.qmp"), source_qemu_key(::getpid(), "/b.qmp"));
  EXPECT_NE(source_qemu_key(-1, "/a.qmp"), source_qemu_key(-1, "/b.qmp"));
  EXPECT_NE(source_qemu_key(::getpid(), "/a.qmp").find("started "), std::string::npos);
}

}  // namespace
}  // namespace nbdtunnel::engine
