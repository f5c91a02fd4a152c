// `nbdtunnel migrate` over and over: many runs against one long-running destination daemon leave
// it with the descriptors it had after the first and bounded memory; and several disks of one
// source QEMU copied at once stay apart. NBDTUNNEL_SOAK_RUNS sets the number of sequential runs
// (default 10 for CI; scripts/soak.sh runs 100).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/harness/files.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::uint64_t kSize = 16 * kMiB;
// What the daemon may grow by over the whole soak (allocator arenas settle after a few runs).
constexpr long kRssGrowthKiB = 8 * 1024;

int soak_runs() {
  const char* v = std::getenv("NBDTUNNEL_SOAK_RUNS");
  if (v == nullptr || *v == '\0') return 10;
  const int n = std::atoi(v);
  return n > 0 ? n : 10;
}

// Open descriptors of `pid` (entries of /proc/PID/fd).
int fd_count(pid_t pid) {
  int n = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    ++n;
  }
  return n;
}

// VmRSS of `pid` in KiB, or -1.
long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

// The daemon closes a channel when it sees the peer go, a moment after migrate exits: the fd
// count once two samples 100 ms apart agree (at most 3 s).
int settled_fd_count(pid_t pid) {
  int last = fd_count(pid);
  for (int i = 0; i < 30; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int now = fd_count(pid);
    if (now == last) return now;
    last = now;
  }
  return last;
}

struct Sample {
  int run;
  int fds;
  long rss;
};

// One line per sample on stdout (scripts/soak.sh collects them) and in the test's XML.
void record(const Sample& s) {
  std::cout << "soak-sample run=" << s.run << " fds=" << s.fds << " rss_kib=" << s.rss << std::endl;
  ::testing::Test::RecordProperty(
      "run_" + std::to_string(s.run),
      "fds=" + std::to_string(s.fds) + " rss_kib=" + std::to_string(s.rss));
}

// Each run copies new data (the source image rewritten in place, same inode, while no job
// runs) into a zeroed destination, so every run really moves the whole disk. The destination
// daemon exports the same node each PREPARE and removes the export at FINISH.
TEST(MigrateSoak, SequentialRunsAgainstOneDaemonLeakNothing) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  const int runs = soak_runs();
  TempDir dir;
  StorageHosts h = start_storage_hosts(dir, kSize, 1);
  auto dest = start_migration_dest(dir, h.dst);
  const pid_t pid = dest.process.pid();

  std::vector<Sample> samples;
  const auto started = std::chrono::steady_clock::now();
  for (int run = 1; run <= runs; ++run) {
    make_random_image(dir.file("src0.raw"), kSize, 1000 + static_cast<std::uint64_t>(run));
    make_zero_image(dir.file("dst0.raw"), kSize);
    const std::string name = "migrate-" + std::to_string(run);
    auto r = run_migrate(dir, name, migrate_args(h.src, dest.port, {"disk0"}, {"--json"}));
    ASSERT_EQ(r.exit_code, 0) << "run " << run << "\n" << describe(r.events) << r.stderr_text;
    ASSERT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw"))) << "run " << run;
    ASSERT_TRUE(source_is_clean(h.src.qmp())) << "run " << run;
    ASSERT_TRUE(has_no_export(h.dst.qmp())) << "run " << run;
    ASSERT_TRUE(dest.process.running()) << "run " << run;
    if (run == 1 || run % 10 == 0 || run == runs) {
      samples.push_back(Sample{run, settled_fd_count(pid), rss_kib(pid)});
      record(samples.back());
    }
    // A passed run's logs are of no more use, and 100 runs' would pile up.
    std::filesystem::remove(dir.file(name + ".out"));
    std::filesystem::remove(dir.file(name + ".err"));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cout << "soak-total runs=" << runs << " seconds=" << seconds << std::endl;

  const Sample& first = samples.front();
  const Sample& last = samples.back();
  EXPECT_EQ(last.fds, first.fds) << "descriptors after run " << last.run << " vs run 1";
  EXPECT_LE(last.rss - first.rss, kRssGrowthKiB)
      << "RSS grew from " << first.rss << " KiB (run 1) to " << last.rss << " KiB (run " << last.run
      << ")";
}

// Four disks of one qemu-storage-daemon copied at once by one migrate run (one engine per
// source QEMU: see the disabled test below): four mirror jobs side by side, held in sync, with
// four distinct job ids and node names; then all four complete, identical, and nothing is left.
TEST(MigrateSoak, FourDisksOfOneSourceQemuMirrorAtOnceUnderDistinctNames) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  constexpr int kDisks = 4;
  TempDir dir;
  std::vector<std::string> src_args, dst_args, disks;
  for (int i = 0; i < kDisks; ++i) {
    const std::string n = std::to_string(i);
    make_random_image(dir.file("src" + n + ".raw"), kSize, 500 + static_cast<std::uint64_t>(i));
    make_zero_image(dir.file("dst" + n + ".raw"), kSize);
    for (auto& a : raw_disk_args("disk" + n, dir.file("src" + n + ".raw"))) src_args.push_back(a);
    for (auto& a : raw_disk_args("disk" + n, dir.file("dst" + n + ".raw"))) dst_args.push_back(a);
    disks.push_back("disk" + n);
  }
  auto src = start_storage_host(dir, "qsd-src", src_args);
  auto dst = start_storage_host(dir, "qsd-dst", dst_args);
  auto dest = start_migration_dest(dir, dst);

  const std::string ctl = dir.file("ctl.sock");
  MigrateRun run(
      dir, "migrate",
      migrate_args(src, dest.port, disks,
                   {"--json", "--finish", "sync", "--control-socket", ctl, "--id", "soak-four"}));
  auto ready =
      run.wait_event([](const json& e) { return e.value("event", "") == "ready"; }, Seconds(60));
  ASSERT_TRUE(ready) << describe(run.events());
  std::set<std::string> jobs, nodes;
  for (const auto& j : src.qmp().execute("query-block-jobs")) {
    jobs.insert(j.value("device", ""));
    EXPECT_TRUE(j.value("ready", false)) << j.dump();
  }
  for (const auto& n : src.qmp().execute("query-named-block-nodes", {{"flat", true}})) {
    const std::string name = n.value("node-name", "");
    if (name.rfind("nbdtunnel-", 0) == 0) nodes.insert(name);
  }
  EXPECT_EQ(jobs.size(), static_cast<std::size_t>(kDisks)) << "jobs running at once";
  // An NBD node and a raw view per disk.
  EXPECT_EQ(nodes.size(), static_cast<std::size_t>(2 * kDisks)) << "distinct nbdtunnel nodes";
  ControlClient control(ctl, Seconds(10));
  const json fin = control.execute("finish");
  EXPECT_TRUE(fin.contains("return")) << fin.dump();

  auto code = run.wait_exit(Seconds(60));
  ASSERT_TRUE(code) << "migrate did not exit after finish";
  EXPECT_EQ(*code, 0) << describe(run.events());
  EXPECT_EQ(events_named(run.events(), "disk_completed").size(), static_cast<std::size_t>(kDisks));
  for (int i = 0; i < kDisks; ++i) {
    const std::string n = std::to_string(i);
    EXPECT_TRUE(files_identical(dir.file("src" + n + ".raw"), dir.file("dst" + n + ".raw")))
        << "disk" << n;
  }
  EXPECT_TRUE(source_is_clean(src.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));
  EXPECT_TRUE(dest.process.running());
}

// What should hold and does not yet: a second migrate on a source QEMU whose first migration is
// still copying (its own --id, monitor, disk and destination) must leave the first one alone.
// Today the second engine's sweep for a killed run's leftovers takes the first one's job and
// nodes (named nbdtunnel-*) for leftovers: it cancels the job and deletes the nodes, and the
// first run fails with "the job was cancelled by someone else". Disabled until the sweep can
// tell a dead run's names from a live one's (e.g. a lock held by the live engine, named after
// its id). Run it with --gtest_also_run_disabled_tests.
TEST(MigrateSoak, DISABLED_SecondEngineOnABusySourceQemuLeavesTheFirstAlone) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  constexpr std::uint64_t kBig = 64 * kMiB;
  TempDir dir;
  std::vector<std::string> src_args;
  for (int i = 0; i < 2; ++i) {
    const std::string n = std::to_string(i);
    make_random_image(dir.file("src" + n + ".raw"), kBig, 700 + static_cast<std::uint64_t>(i));
    make_zero_image(dir.file("dst" + n + ".raw"), kBig);
    for (auto& a : raw_disk_args("disk" + n, dir.file("src" + n + ".raw"))) src_args.push_back(a);
  }
  // A second QMP monitor for the second engine (a monitor serves one client at a time).
  const std::string mon = dir.file("qsd-src-mon1.qmp");
  for (const std::string& a :
       {std::string("--chardev"), "socket,path=" + mon + ",server=on,wait=off,id=mon1",
        std::string("--monitor"), std::string("chardev=mon1")}) {
    src_args.push_back(a);
  }
  auto src = start_storage_host(dir, "qsd-src", src_args);
  // A destination QEMU serves one migration at a time: one each.
  auto dst0 = start_storage_host(dir, "qsd-dst0", raw_disk_args("disk0", dir.file("dst0.raw")));
  auto dst1 = start_storage_host(dir, "qsd-dst1", raw_disk_args("disk1", dir.file("dst1.raw")));
  auto dest0 = start_migration_dest(dir, dst0, kDestHostId, "dest0");
  auto dest1 = start_migration_dest(dir, dst1, kDestHostId, "dest1");

  MigrateRun first(
      dir, "migrate-first",
      migrate_args(src, dest0.port, {"disk0"}, {"--json", "--bandwidth", "8", "--id", "first"}));
  auto copying = first.wait_event(
      [](const json& e) {
        return e.value("event", "") == "progress" && e.value("done", 0ULL) > 0 &&
               !e.value("ready", false);
      },
      Seconds(30));
  ASSERT_TRUE(copying) << describe(first.events());
  auto second =
      run_migrate(dir, "migrate-second",
                  {"--source-qmp", mon, "--dest", "127.0.0.1:" + std::to_string(dest1.port),
                   "--disk", "disk1", "--id", "second", "--json", "--force"});
  EXPECT_EQ(second.exit_code, 0) << describe(second.events) << second.stderr_text;
  for (const auto& e : events_named(second.events, "info")) {
    EXPECT_EQ(e.value("message", "").find("left by a migration"), std::string::npos) << e.dump();
  }
  auto code = first.wait_exit(Seconds(60));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 0) << describe(first.events());
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(files_identical(dir.file("src1.raw"), dir.file("dst1.raw")));
  EXPECT_TRUE(source_is_clean(src.qmp()));
}

}  // namespace
}  // namespace nbdtunnel::testing
