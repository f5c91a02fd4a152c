// `nbdtunnel migrate` interrupted mid-copy — by SIGINT, by `cancel` on the control socket, by a
// mirror that cannot start, by either QEMU or the destination daemon going away — ends with the
// right exit code, leaves both hosts clean and the daemons serving.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <thread>

#include "tests/integration/harness/files.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;
// 128 MiB at 8 MiB/s: about 16 s of copying, plenty of time to interrupt it.
constexpr std::uint64_t kSize = 128 * kMiB;
const std::string kSlow = "8";

// A source and a destination qemu-storage-daemon with disk0 each, and the destination daemon.
struct Hosts {
  QemuHost src;
  QemuHost dst;
  TunnelDest dest;
};

Hosts start_hosts(const TempDir& dir, const std::vector<std::string>& dest_args = {}) {
  StorageHosts s = start_storage_hosts(dir, kSize, 401);
  auto dest = start_migration_dest(dir, s.dst, kDestHostId, "dest", dest_args);
  return Hosts{std::move(s.src), std::move(s.dst), std::move(dest)};
}

// Waits until the copy has visibly started (some bytes done, not in sync yet).
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

// What every cancelled run must leave: exit 130, summary "cancelled", nothing left on either
// side, the source disk untouched, and a destination daemon that still answers.
void expect_cancelled_cleanly(const TempDir& dir, Hosts& h, MigrateRun& run) {
  auto code = run.wait_exit(Seconds(30));
  ASSERT_TRUE(code) << "migrate did not exit within 30 s of the cancel";
  const auto events = run.events();
  EXPECT_EQ(*code, 130) << describe(events);
  auto s = summary(events);
  ASSERT_TRUE(s) << describe(events);
  EXPECT_EQ(s->value("result", ""), "cancelled");
  EXPECT_TRUE(h.src.qemu.process().running());
  EXPECT_TRUE(h.dst.qemu.process().running());
  EXPECT_TRUE(h.dest.process.running());
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));

  auto check = run_migrate(dir, "check-after",
                           migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--check-only"}),
                           Seconds(30));
  EXPECT_EQ(check.exit_code, 0) << describe(check.events) << check.stderr_text;
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

TEST(MigrateCancel, CancelBySigintLeavesBothSidesClean) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  run.process().signal(SIGINT);
  expect_cancelled_cleanly(dir, h, run);
}

// SIGKILL gives the engine no chance to clean up: its nodes stay in the source QEMU (named after
// its migration id). The next run finds them, removes them, and migrates.
TEST(MigrateCancel, AfterSigkillTheNextRunRemovesWhatTheDeadOneLeftAndMigrates) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  {
    MigrateRun run(dir, "migrate-killed",
                   migrate_args(h.src, h.dest.port, {"disk0"},
                                {"--json", "--bandwidth", kSlow, "--id", "killed-run"}));
    ASSERT_TRUE(wait_copying(run));
    run.process().kill();
  }
  EXPECT_FALSE(source_is_clean(h.src.qmp())) << "a killed run leaves its nodes";
  auto again = run_migrate(dir, "migrate-again",
                           migrate_args(h.src, h.dest.port, {"disk0"}, {"--json"}), Seconds(60));
  EXPECT_EQ(again.exit_code, 0) << describe(again.events) << again.stderr_text;
  bool told = false;
  for (const auto& e : events_named(again.events, "info")) {
    told |=
        e.value("message", "").find("left by a migration that did not end") != std::string::npos;
  }
  EXPECT_TRUE(told) << describe(again.events);
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

TEST(MigrateCancel, CancelByControlSocketLeavesBothSidesClean) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  const std::string ctl = dir.file("ctl.sock");
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"},
                              {"--json", "--bandwidth", kSlow, "--control-socket", ctl}));
  ASSERT_TRUE(wait_copying(run));
  ControlClient control(ctl, Seconds(10));
  const json q = control.execute("query-migration");
  ASSERT_TRUE(q.contains("return")) << q.dump();
  EXPECT_EQ(q["return"].value("phase", ""), "mirror") << q.dump();
  // finish is refused outside --finish sync; the migration goes on.
  const json fin = control.execute("finish");
  EXPECT_TRUE(fin.contains("error")) << fin.dump();
  const json bw = control.execute("set-bandwidth", {{"mib-per-sec", 4}});
  EXPECT_TRUE(bw.contains("return")) << bw.dump();
  const json jobs = h.src.qmp().execute("query-block-jobs");
  ASSERT_EQ(jobs.size(), 1U) << jobs.dump();
  EXPECT_EQ(jobs[0].value("speed", 0ULL), 4 * kMiB) << "set-bandwidth did not reach the job";
  // A limit that rounds to 0 bytes/s would be QEMU's "no limit": refused, the old one stays.
  const json tiny = control.execute("set-bandwidth", {{"mib-per-sec", 1e-9}});
  EXPECT_TRUE(tiny.contains("error")) << tiny.dump();
  EXPECT_EQ(h.src.qmp().execute("query-block-jobs")[0].value("speed", 0ULL), 4 * kMiB);
  const json unknown = control.execute("no-such-command");
  ASSERT_TRUE(unknown.contains("error")) << unknown.dump();
  EXPECT_EQ(unknown["error"].value("class", ""), "CommandNotFound") << unknown.dump();
  EXPECT_TRUE(run.process().running());

  const json cancel = control.execute("cancel");
  EXPECT_TRUE(cancel.contains("return")) << cancel.dump();
  expect_cancelled_cleanly(dir, h, run);
  EXPECT_FALSE(std::filesystem::exists(ctl)) << "the control socket file was left behind";
}

TEST(MigrateCancel, CancelInSyncLeavesBothSidesClean) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  const std::string ctl = dir.file("ctl.sock");
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"},
                              {"--json", "--finish", "sync", "--control-socket", ctl}));
  auto ready =
      run.wait_event([](const json& e) { return e.value("event", "") == "ready"; }, Seconds(60));
  ASSERT_TRUE(ready) << describe(run.events());
  ControlClient control(ctl, Seconds(10));
  const json cancel = control.execute("cancel");
  EXPECT_TRUE(cancel.contains("return")) << cancel.dump();
  expect_cancelled_cleanly(dir, h, run);
}

// The engine dies without a word: the destination notices the lost channel, keeps it for its
// grace period (a lost connection may come back), then removes its exports by itself. (The
// source's job is left to whoever kills the engine this way.)
TEST(MigrateCancel, MigrateKilledLeavesDestinationClean) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir, {"--resume-timeout", "3"});
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  const json exports = h.dst.qmp().execute("query-block-exports");
  EXPECT_EQ(exports.size(), 1U) << exports.dump();
  run.process().kill();
  EXPECT_TRUE(h.dest.process.wait_for_log("removing its exports", Seconds(20)))
      << "the destination did not tear down the migration of a vanished engine";
  const auto deadline = std::chrono::steady_clock::now() + Seconds(10);
  while (!h.dst.qmp().execute("query-block-exports").empty() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
  EXPECT_TRUE(h.dest.process.running());
  EXPECT_TRUE(h.dst.qemu.process().running());
}

TEST(MigrateCancel, DestinationQemuKilledMidCopy) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  h.dst.qemu.process().kill();

  auto code = run.wait_exit(Seconds(60));
  ASSERT_TRUE(code) << "migrate did not exit within 60 s of the destination QEMU's death";
  const auto events = run.events();
  EXPECT_EQ(*code, 1) << describe(events);
  auto errors = events_named(events, "error");
  ASSERT_FALSE(errors.empty()) << describe(events);
  const std::string message = errors.front().value("message", "");
  EXPECT_TRUE(errors.front().value("disk", "") == "disk0" ||
              message.find("disk0") != std::string::npos)
      << "the error does not say which disk failed: " << errors.front().dump();
  auto s = summary(events);
  ASSERT_TRUE(s) << describe(events);
  EXPECT_EQ(s->value("result", ""), "failed");

  EXPECT_TRUE(h.src.qemu.process().running());
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));
  EXPECT_TRUE(h.dest.process.running()) << "the dest daemon died with its QEMU";

  // The daemon still answers; its checks now fail, since its QEMU is gone.
  auto check = run_migrate(dir, "check-after",
                           migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--check-only"}),
                           Seconds(30));
  EXPECT_EQ(check.exit_code, 3) << describe(check.events) << check.stderr_text;
  EXPECT_EQ(verdict_of(check.events, "disk disk0 on destination"), "fail")
      << describe(check.events);
}

// A mirror that cannot start (its disk is busy with another job) fails the migration after the
// first disk's mirror has started: that one is cancelled and both target nodes removed, and the
// other job is left alone.
TEST(MigrateCancel, SecondMirrorFailingToStartCleansTheFirst) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 411);
  make_random_image(dir.file("src1.raw"), 16 * kMiB, 412);
  make_zero_image(dir.file("dst0.raw"), kSize);
  make_zero_image(dir.file("dst1.raw"), 16 * kMiB);
  std::vector<std::string> src_args = raw_disk_args("disk0", dir.file("src0.raw"));
  for (auto& a : raw_disk_args("disk1", dir.file("src1.raw"))) src_args.push_back(a);
  std::vector<std::string> dst_args = raw_disk_args("disk0", dir.file("dst0.raw"));
  for (auto& a : raw_disk_args("disk1", dir.file("dst1.raw"))) dst_args.push_back(a);
  auto src = start_storage_host(dir, "qsd-src", src_args);
  auto dst = start_storage_host(dir, "qsd-dst", dst_args);
  auto dest = start_migration_dest(dir, dst);
  // Someone else's slow job on disk1, under another id: a warning, which --force accepts.
  src.qmp().execute("blockdev-add",
                    {{"driver", "null-co"}, {"node-name", "sink"}, {"size", 16 * kMiB}});
  src.qmp().execute("blockdev-mirror", {{"job-id", "backup-job"},
                                        {"device", "disk1"},
                                        {"target", "sink"},
                                        {"sync", "full"},
                                        {"speed", 4096}});

  auto r = run_migrate(
      dir, "migrate",
      migrate_args(src, dest.port, {"disk0", "disk1"}, {"--json", "--force", "--bandwidth", kSlow}),
      Seconds(60));
  EXPECT_EQ(r.exit_code, 1) << describe(r.events) << r.stderr_text;
  auto errors = events_named(r.events, "error");
  ASSERT_FALSE(errors.empty()) << describe(r.events);
  EXPECT_EQ(errors.front().value("disk", ""), "disk1") << errors.front().dump();
  const json jobs = src.qmp().execute("query-block-jobs");
  ASSERT_EQ(jobs.size(), 1U) << jobs.dump();
  EXPECT_EQ(jobs[0].value("device", ""), "backup-job");
  for (const auto& n : src.qmp().execute("query-named-block-nodes", {{"flat", true}})) {
    EXPECT_NE(n.value("node-name", "").rfind("nbdtunnel", 0), 0U) << "left behind: " << n.dump();
  }
  EXPECT_TRUE(has_no_export(dst.qmp()));
  src.qmp().execute("block-job-cancel", {{"device", "backup-job"}, {"force", true}});
}

// The destination serves one migration at a time: a second one is refused at PREPARE and its
// failure does not disturb the first.
TEST(MigrateCancel, SecondMigrationWhileBusyIsRefused) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  make_random_image(dir.file("other.raw"), kSize, 421);
  auto other = start_storage_host(dir, "qsd-other", raw_disk_args("disk0", dir.file("other.raw")));
  MigrateRun first(dir, "migrate",
                   migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(first));

  auto second = run_migrate(dir, "migrate-second",
                            migrate_args(other, h.dest.port, {"disk0"}, {"--json"}), Seconds(30));
  EXPECT_EQ(second.exit_code, 1) << describe(second.events) << second.stderr_text;
  auto errors = events_named(second.events, "error");
  ASSERT_FALSE(errors.empty()) << describe(second.events);
  EXPECT_NE(errors.front().value("message", "").find("already serving"), std::string::npos)
      << errors.front().dump();
  EXPECT_TRUE(source_is_clean(other.qmp()));

  // The first goes on, and cancels cleanly.
  EXPECT_TRUE(first.process().running());
  const json exports = h.dst.qmp().execute("query-block-exports");
  EXPECT_EQ(exports.size(), 1U) << exports.dump();
  first.process().signal(SIGINT);
  expect_cancelled_cleanly(dir, h, first);
}

// The destination daemon dies: the channel is lost, the engine says so and cleans the source.
TEST(MigrateCancel, DestinationDaemonKilledMidCopy) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  h.dest.process.kill();

  auto code = run.wait_exit(Seconds(30));
  ASSERT_TRUE(code) << "migrate did not exit within 30 s of losing the destination daemon";
  const auto events = run.events();
  EXPECT_EQ(*code, 1) << describe(events);
  auto errors = events_named(events, "error");
  ASSERT_FALSE(errors.empty()) << describe(events);
  auto s = summary(events);
  ASSERT_TRUE(s) << describe(events);
  EXPECT_EQ(s->value("result", ""), "failed");
  EXPECT_TRUE(h.src.qemu.process().running());
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));
}

// The destination daemon is stopped (SIGTERM) mid-copy: it removes its exports before it
// exits, the engine fails cleanly, and a new daemon on the same QEMU serves the next migration.
TEST(MigrateCancel, DestinationDaemonStoppedMidCopy) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  h.dest.process.signal(SIGTERM);
  EXPECT_EQ(h.dest.process.wait_exit(Seconds(10)), 0);
  auto code = run.wait_exit(Seconds(30));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 1) << describe(run.events());
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));

  auto again = start_migration_dest(dir, h.dst, kDestHostId, "dest-again");
  auto r = run_migrate(dir, "migrate-again", migrate_args(h.src, again.port, {"disk0"}, {"--json"}),
                       Seconds(60));
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

// The destination daemon crashes mid-copy and is restarted on the same QEMU: the migration fails
// (exit 1) with the source left clean, and the next migration through the restarted daemon
// succeeds, because the restarted daemon removes at start the NBD server and nbdtunnel-* exports
// the crashed one recorded (migrate_faults_test looks closer); the copy is identical and no
// export remains afterwards.
TEST(MigrateCancel, DestinationDaemonRestartedAfterCrash) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  h.dest.process.kill();
  auto code = run.wait_exit(Seconds(30));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 1) << describe(run.events());
  EXPECT_TRUE(source_is_clean(h.src.qmp()));

  auto again = start_migration_dest(dir, h.dst, kDestHostId, "dest-again");
  auto r = run_migrate(dir, "migrate-again", migrate_args(h.src, again.port, {"disk0"}, {"--json"}),
                       Seconds(60));
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

// The source QEMU goes away (the VM was shut down or crashed) in the middle of the copy: migrate
// notices the lost QMP connection within 15 s and fails (exit 1, summary "failed"), and the
// destination daemon keeps running with no export left. Should migrate not notice, the test
// fails, then sends SIGINT, as an operator would, to check that the cancel path still cleans.
TEST(MigrateCancel, SourceQemuKilledMidCopy) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  Hosts h = start_hosts(dir);
  MigrateRun run(dir, "migrate",
                 migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  h.src.qemu.process().kill();

  auto code = run.wait_exit(Seconds(15));
  EXPECT_TRUE(code) << "migrate did not notice within 15 s that the source QEMU is gone";
  if (code) {
    EXPECT_EQ(*code, 1) << describe(run.events());
    auto s = summary(run.events());
    ASSERT_TRUE(s) << describe(run.events());
    EXPECT_EQ(s->value("result", ""), "failed");
  } else {
    run.process().signal(SIGINT);  // what an operator would do; see whether that still cleans up
    EXPECT_TRUE(run.wait_exit(Seconds(30)));
  }
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
  EXPECT_TRUE(h.dest.process.running());
}

}  // namespace
}  // namespace nbdtunnel::testing
