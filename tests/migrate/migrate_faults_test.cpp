// Faults on the destination and source hosts during `nbdtunnel migrate`, each named after the
// fault: the destination daemon killed and restarted (it removes what the dead one left in its
// QEMU), a second daemon for the same QEMU, a killed libvirt-role daemon's run directories,
// either QEMU killed mid-copy, the destination disk full. Each ends with a message that says
// what happened, and nothing left behind.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/harness/files.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;
// 64 MiB at 8 MiB/s: about 8 s of copying, time enough to interrupt it.
constexpr std::uint64_t kSize = 64 * kMiB;
const std::string kSlow = "8";

using Hosts = StorageHosts;

Hosts start_hosts(const TempDir& dir) {
  return start_storage_hosts(dir, kSize, 601);
}

// A destination daemon with the run directory it picks by itself for its QEMU.
TunnelDest start_default_dest(const TempDir& dir, const QemuHost& host, const std::string& name) {
  return start_migration_dest(dir, host, kDestHostId, name, {}, true);
}

// The run directory a daemon says it uses.
std::string run_dir_of(TunnelDest& dest) {
  auto m = dest.process.wait_for_log("run directory (\\S+)", Seconds(5));
  return m ? (*m)[1] : std::string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

::testing::AssertionResult wait_copying(MigrateRun& run) {
  auto e = run.wait_event(
      [](const json& ev) {
        return ev.value("event", "") == "progress" && ev.value("done", 0ULL) > 0 &&
               !ev.value("ready", false);
      },
      Seconds(30));
  if (!e) {
    return ::testing::AssertionFailure() << "the copy did not start\n" << describe(run.events());
  }
  return ::testing::AssertionSuccess();
}

// The first error of a finished run that failed (exit 1, summary "failed"), or "".
std::string failed_with(MigrateRun& run, Seconds timeout) {
  auto code = run.wait_exit(timeout);
  EXPECT_TRUE(code) << "migrate did not exit in time";
  if (!code) return "";
  const auto events = run.events();
  EXPECT_EQ(*code, 1) << describe(events);
  auto s = summary(events);
  EXPECT_TRUE(s && s->value("result", "") == "failed") << describe(events);
  auto errors = events_named(events, "error");
  EXPECT_FALSE(errors.empty()) << describe(events);
  return errors.empty() ? "" : errors.front().value("message", "");
}

// Waits (bounded) until the QEMU has no block export.
::testing::AssertionResult exports_go(qmp::BlockingQmp& qmp, Seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!qmp.execute("query-block-exports").empty() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return has_no_export(qmp);
}

// Whether the QEMU runs an NBD server: nbd-server-stop fails only when none runs.
bool nbd_server_running(qmp::BlockingQmp& qmp) {
  try {
    qmp.execute("nbd-server-stop");
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

// Entries of `dir` named nbdtunnel-dest-*: private directories of daemons.
std::vector<std::string> dest_dirs_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("nbdtunnel-dest-", 0) == 0) out.push_back(e.path());
  }
  return out;
}

TEST(MigrateFaults, DestinationDaemonKilledTheRestartedOneRemovesItsExportsAndServer) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  std::optional<TunnelDest> dest(start_default_dest(dir, h.dst, "dest"));
  const std::string run_dir = run_dir_of(*dest);
  ASSERT_FALSE(run_dir.empty()) << "the daemon does not say which run directory it uses";
  {
    MigrateRun run(dir, "migrate",
                   migrate_args(h.src, dest->port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
    ASSERT_TRUE(wait_copying(run));
    dest->process.kill();
    const std::string message = failed_with(run, Seconds(30));
    EXPECT_NE(message.find("lost"), std::string::npos) << message;
  }
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  // What the dead daemon leaves: its export, writable, and its record of it.
  EXPECT_EQ(h.dst.qmp().execute("query-block-exports").size(), 1U);
  EXPECT_NE(read_file(run_dir + "/dest.state").find("export "), std::string::npos)
      << read_file(run_dir + "/dest.state");

  dest.emplace(start_default_dest(dir, h.dst, "dest-again"));
  EXPECT_EQ(run_dir_of(*dest), run_dir) << "the restarted daemon did not find the same directory";
  EXPECT_TRUE(dest->process.wait_for_log("removed export nbdtunnel-\\S+ of migration", Seconds(5)));
  EXPECT_TRUE(dest->process.wait_for_log("stopped the destination QEMU's NBD server", Seconds(5)));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
  EXPECT_FALSE(nbd_server_running(h.dst.qmp())) << "the dead daemon's NBD server still runs";

  auto again = run_migrate(dir, "migrate-again",
                           migrate_args(h.src, dest->port, {"disk0"}, {"--json"}), Seconds(60));
  EXPECT_EQ(again.exit_code, 0) << describe(again.events) << again.stderr_text;
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));

  dest->process.signal(SIGTERM);
  EXPECT_EQ(dest->process.wait_exit(Seconds(10)), 0);
  EXPECT_FALSE(std::filesystem::exists(run_dir)) << run_dir << " was left behind";
  EXPECT_TRUE(dest_dirs_in(dir.path()).empty());
}

TEST(MigrateFaults, SecondDestinationDaemonForTheSameQemuIsRefused) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  auto first = start_default_dest(dir, h.dst, "dest");
  const std::string run_dir = run_dir_of(first);
  // The same QEMU by another path: the directory comes from the canonical path.
  const std::string other_path = dir.file("link-to-tool.qmp");
  std::filesystem::create_symlink(h.dst.tool_qmp, other_path);
  Process second("dest-second",
                 {nbdtunnel_binary(), "dest", "--listen", "127.0.0.1:0", "--qmp", other_path},
                 dir.file("dest-second.log"));
  EXPECT_EQ(second.wait_exit(Seconds(10)), 2) << second.log();
  EXPECT_NE(second.log().find("already serves the destination QEMU"), std::string::npos)
      << second.log();
  EXPECT_NE(second.log().find(std::to_string(first.process.pid())), std::string::npos)
      << "the refusal does not name the daemon that holds it: " << second.log();
  EXPECT_TRUE(first.process.running());
  EXPECT_TRUE(std::filesystem::exists(run_dir + "/dest.lock"));

  // A malformed state file (written by hand, or truncated) is reported and ignored.
  first.process.signal(SIGTERM);
  ASSERT_EQ(first.process.wait_exit(Seconds(10)), 0);
  EXPECT_FALSE(std::filesystem::exists(run_dir));
  std::filesystem::create_directory(run_dir);
  std::ofstream(run_dir + "/dest.state") << "nbdtunnel-dest-state 1\nexport x/y nbdtunnel-a\n";
  auto third = start_default_dest(dir, h.dst, "dest-third");
  EXPECT_TRUE(third.process.wait_for_log("ignoring the malformed state file", Seconds(5)))
      << third.process.log();
  auto r = run_migrate(dir, "migrate", migrate_args(h.src, third.port, {"disk0"}, {"--json"}),
                       Seconds(60));
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  third.process.signal(SIGTERM);
  EXPECT_EQ(third.process.wait_exit(Seconds(10)), 0);
  EXPECT_FALSE(std::filesystem::exists(run_dir));
}

// A `dest --libvirt` daemon killed with migrations prepared leaves RUN_DIR/<id>/: the next one
// removes those at start, and leaves alone what a live process holds or nbdtunnel did not make.
TEST(MigrateFaults, LibvirtDestinationRemovesRunDirectoriesOfKilledRuns) {
  TempDir dir;
  const std::string run_dir = dir.file("run");
  std::filesystem::create_directories(run_dir + "/dead-run");  // no live process holds it
  std::ofstream(run_dir + "/dead-run/memory.sock") << "";
  std::filesystem::create_directories(run_dir + "/.not-a-migration");
  const std::vector<std::string> args{"--libvirt", "--insecure",       "--run-dir",
                                      run_dir,     "--libvirt-socket", dir.file("no-libvirt.sock")};
  auto first = start_dest(dir, {}, args, 0, "dest-libvirt");
  EXPECT_TRUE(first.process.wait_for_log("removed \\S+/dead-run, left by a migration", Seconds(5)))
      << first.process.log();
  EXPECT_FALSE(std::filesystem::exists(run_dir + "/dead-run"));
  EXPECT_TRUE(std::filesystem::exists(run_dir + "/.not-a-migration"));
}

TEST(MigrateFaults, DestinationQemuKilledMidCopyIsNamed) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  auto dest = start_migration_dest(dir, h.dst);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  h.dst.qemu.process().kill();
  const std::string message = failed_with(run, Seconds(60));
  EXPECT_NE(message.find("disk0"), std::string::npos) << message;
  EXPECT_NE(message.find("destination QEMU"), std::string::npos)
      << "the error does not say the destination QEMU has gone: " << message;
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));
  EXPECT_TRUE(dest.process.running());
  EXPECT_TRUE(dest.process.wait_for_log("closed its QMP connection", Seconds(5)));
  // What it had created went with that QEMU: its record is dropped, and a QEMU started anew at
  // that path is not touched by a later daemon.
  EXPECT_TRUE(dest.process.wait_for_log("migration '\\S+': removing its exports", Seconds(10)));
  const std::string state = h.dst.tool_qmp + ".run/dest.state";
  const auto deadline = std::chrono::steady_clock::now() + Seconds(5);
  while (read_file(state).find("export ") != std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(std::filesystem::exists(state));
  EXPECT_EQ(read_file(state).find("export "), std::string::npos) << read_file(state);
}

TEST(MigrateFaults, SourceQemuKilledMidCopyIsNamedAndTheDestinationCleans) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  auto dest = start_migration_dest(dir, h.dst);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  EXPECT_EQ(h.dst.qmp().execute("query-block-exports").size(), 1U);
  h.src.qemu.process().kill();
  const std::string message = failed_with(run, Seconds(20));
  EXPECT_NE(message.find("source QEMU"), std::string::npos) << message;
  EXPECT_TRUE(exports_go(h.dst.qmp(), Seconds(10)));
  EXPECT_FALSE(nbd_server_running(h.dst.qmp()));
  EXPECT_TRUE(dest.process.running());
}

// The destination image lives on a 16 MiB tmpfs (in the destination QEMU's own mount namespace)
// but is 64 MiB large: the copy runs out of space a quarter of the way.
TEST(MigrateFaults, DestinationDiskFullIsNamed) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon", "unshare");
  if (::geteuid() != 0) {
    // CI runs as root: there a skip would hide the test.
    if (running_in_ci()) FAIL() << "mounting a tmpfs needs root, and CI must run every test";
    GTEST_SKIP() << "mounting a tmpfs needs root";
  }
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 602);
  const std::string full = dir.file("full");
  std::filesystem::create_directory(full);
  const std::string image = full + "/dst0.raw";
  const std::string setup = "mount -t tmpfs -o size=16m nbdtunnel-test " + full +
                            " && truncate -s " + std::to_string(kSize) + " " + image +
                            " && exec \"$0\" \"$@\"";
  auto src = start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", image),
                                {"unshare", "-m", "--propagation", "private", "sh", "-c", setup});
  auto dest = start_migration_dest(dir, dst);
  auto r =
      run_migrate(dir, "migrate", migrate_args(src, dest.port, {"disk0"}, {"--json"}), Seconds(60));
  EXPECT_EQ(r.exit_code, 1) << describe(r.events) << r.stderr_text;
  auto errors = events_named(r.events, "error");
  ASSERT_FALSE(errors.empty()) << describe(r.events);
  const std::string message = errors.front().value("message", "");
  EXPECT_EQ(errors.front().value("disk", ""), "disk0") << errors.front().dump();
  EXPECT_NE(message.find("destination disk 'disk0' is full"), std::string::npos) << message;
  EXPECT_TRUE(source_is_clean(src.qmp()));
  EXPECT_TRUE(exports_go(dst.qmp(), Seconds(10)));
  EXPECT_FALSE(nbd_server_running(dst.qmp()));
}

}  // namespace
}  // namespace nbdtunnel::testing
