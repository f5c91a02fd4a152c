// `nbdtunnel migrate` over and over: many runs against one long-running destination daemon leave
// it with the descriptors it had after the first and bounded memory; and several disks of one
// source QEMU copied at once, by one engine or by several, stay apart. NBDTUNNEL_SOAK_RUNS sets the
// number of sequential runs (default 10 for CI; scripts/soak.sh runs 100).
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

// Four disks of one qemu-storage-daemon copied at once by one migrate run (four engines on one
// QEMU: see the test below): four mirror jobs side by side, held in sync, with
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

// Four engines migrating four disks of one source QEMU at once, each on a QMP monitor of its
// own, with its own --id and its own destination: the first is copying when the three others
// start (together). Job and node names carry the migration id, and each run holds a lock named
// after it, so no engine takes another's live job or nodes for a dead run's leftovers, and no
// engine's checks count another's job on another disk. A fifth run with the first one's id is
// refused while the first runs. All four reach sync side by side, then complete, identical, and
// leave nothing behind: no job, no node, no lock file.
TEST(MigrateSoak, SecondEngineOnABusySourceQemuLeavesTheFirstAlone) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  constexpr int kEngines = 4;
  TempDir dir;
  std::vector<std::string> src_args;
  std::vector<std::string> monitors;  // monitors[i]: engine i's; the last one for the refused run
  for (int i = 0; i < kEngines; ++i) {
    const std::string n = std::to_string(i);
    make_random_image(dir.file("src" + n + ".raw"), kSize, 700 + static_cast<std::uint64_t>(i));
    make_zero_image(dir.file("dst" + n + ".raw"), kSize);
    for (auto& a : raw_disk_args("disk" + n, dir.file("src" + n + ".raw"))) src_args.push_back(a);
  }
  // More QMP monitors (a monitor serves one client at a time); engine 0 uses the tool monitor.
  for (int i = 1; i <= kEngines; ++i) {
    const std::string mon = dir.file("qsd-src-mon" + std::to_string(i) + ".qmp");
    const std::string id = "mon" + std::to_string(i);
    for (const std::string& a :
         {std::string("--chardev"), "socket,path=" + mon + ",server=on,wait=off,id=" + id,
          std::string("--monitor"), "chardev=" + id}) {
      src_args.push_back(a);
    }
    monitors.push_back(mon);
  }
  auto src = start_storage_host(dir, "qsd-src", src_args);
  monitors.insert(monitors.begin(), src.tool_qmp);
  // A destination QEMU serves one migration at a time: one each.
  std::vector<QemuHost> dsts;
  std::vector<TunnelDest> dests;
  for (int i = 0; i < kEngines; ++i) {
    const std::string n = std::to_string(i);
    dsts.push_back(start_storage_host(dir, "qsd-dst" + n,
                                      raw_disk_args("disk" + n, dir.file("dst" + n + ".raw"))));
  }
  for (int i = 0; i < kEngines; ++i) {
    dests.push_back(start_migration_dest(dir, dsts[static_cast<std::size_t>(i)], kDestHostId,
                                         "dest" + std::to_string(i)));
  }
  auto engine_args = [&](int i, const std::string& id) {
    const std::string n = std::to_string(i);
    return std::vector<std::string>{
        "--source-qmp",
        monitors[static_cast<std::size_t>(i)],
        "--dest",
        "127.0.0.1:" + std::to_string(dests[static_cast<std::size_t>(i)].port),
        "--disk",
        "disk" + n,
        "--id",
        id,
        "--json",
        "--finish",
        "sync",
        "--control-socket",
        dir.file("ctl" + n + ".sock")};
  };
  auto is_ready = [](const json& e) { return e.value("event", "") == "ready"; };

  std::vector<std::unique_ptr<MigrateRun>> runs;
  runs.push_back(std::make_unique<MigrateRun>(dir, "migrate-0", engine_args(0, "engine-0")));
  ASSERT_TRUE(runs[0]->wait_event(is_ready, Seconds(60))) << describe(runs[0]->events());
  for (int i = 1; i < kEngines; ++i) {
    runs.push_back(std::make_unique<MigrateRun>(dir, "migrate-" + std::to_string(i),
                                                engine_args(i, "engine-" + std::to_string(i))));
  }
  for (int i = 1; i < kEngines; ++i) {
    MigrateRun& r = *runs[static_cast<std::size_t>(i)];
    ASSERT_TRUE(r.wait_event(is_ready, Seconds(60))) << "engine " << i << "\n"
                                                     << describe(r.events()) << r.stderr_text();
  }

  // All four in sync at once, under distinct names; no checks warned about the others' jobs.
  std::set<std::string> jobs, nodes;
  for (const auto& j : src.qmp().execute("query-block-jobs")) {
    jobs.insert(j.value("device", ""));
    EXPECT_TRUE(j.value("ready", false)) << j.dump();
  }
  for (const auto& n : src.qmp().execute("query-named-block-nodes", {{"flat", true}})) {
    const std::string name = n.value("node-name", "");
    if (name.rfind("nbdtunnel-", 0) == 0) nodes.insert(name);
  }
  EXPECT_EQ(jobs.size(), static_cast<std::size_t>(kEngines)) << "jobs running at once";
  EXPECT_EQ(nodes.size(), static_cast<std::size_t>(2 * kEngines)) << "distinct nbdtunnel nodes";
  for (int i = 1; i < kEngines; ++i) {
    EXPECT_EQ(verdict_of(runs[static_cast<std::size_t>(i)]->events(),
                         "no block job on disk" + std::to_string(i)),
              "pass")
        << describe(runs[static_cast<std::size_t>(i)]->events());
  }

  // A second run of engine 0's id is refused, and harms nothing.
  auto twin = run_migrate(
      dir, "migrate-twin",
      {"--source-qmp", monitors.back(), "--dest", "127.0.0.1:" + std::to_string(dests[0].port),
       "--disk", "disk0", "--id", "engine-0", "--json"});
  EXPECT_EQ(twin.exit_code, 2) << describe(twin.events) << twin.stderr_text;
  const std::string twin_text = describe(twin.events) + twin.stderr_text;
  EXPECT_NE(twin_text.find("migration id engine-0 is already running on this source QEMU (pid "),
            std::string::npos)
      << twin_text;

  for (int i = 0; i < kEngines; ++i) {
    ControlClient control(dir.file("ctl" + std::to_string(i) + ".sock"), Seconds(10));
    const json fin = control.execute("finish");
    EXPECT_TRUE(fin.contains("return")) << "engine " << i << ": " << fin.dump();
  }
  for (int i = 0; i < kEngines; ++i) {
    MigrateRun& r = *runs[static_cast<std::size_t>(i)];
    auto code = r.wait_exit(Seconds(60));
    ASSERT_TRUE(code) << "engine " << i << " did not exit after finish";
    EXPECT_EQ(*code, 0) << "engine " << i << "\n" << describe(r.events()) << r.stderr_text();
    for (const auto& e : events_named(r.events(), "info")) {
      EXPECT_EQ(e.value("message", "").find("left by a migration"), std::string::npos)
          << "engine " << i << ": " << e.dump();
    }
    const std::string n = std::to_string(i);
    EXPECT_TRUE(files_identical(dir.file("src" + n + ".raw"), dir.file("dst" + n + ".raw")))
        << "disk" << n;
    EXPECT_TRUE(has_no_export(dsts[static_cast<std::size_t>(i)].qmp())) << "dest " << i;
  }
  EXPECT_TRUE(source_is_clean(src.qmp()));
  // Each run removed its lock file as it ended (as root they live in /run/nbdtunnel).
  for (const std::string& base : {dir.path().string(), std::string("/run/nbdtunnel")}) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(base, ec)) {
      const std::string name = e.path().filename().string();
      const bool lock = (name.starts_with(".migrate-") || name.starts_with("nbdtunnel-migrate-")) &&
                        name.find("-engine-") != std::string::npos;
      EXPECT_FALSE(lock) << "lock file left: " << e.path();
    }
  }
}

}  // namespace
}  // namespace nbdtunnel::testing
