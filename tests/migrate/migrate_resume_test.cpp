// A lost TCP connection is not a lost migration: the channel under `nbdtunnel migrate` (and
// under a standing `nbdtunnel source`) is cut by bench/tools/cut_proxy between it and the dest,
// the source reconnects, both sides resume every stream, and QEMU never notices. Named after
// the fault: three resets mid-copy, two resets under a plain QEMU blockdev-mirror, a link down
// for 10 s; and where resume must fail, that it fails clearly and leaves nothing behind: a link
// down for longer than the dest's --resume-timeout, a dest killed and restarted on its port.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <thread>

#include "tests/integration/harness/files.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;
// 64 MiB at 10 MiB/s: about 6.5 s of copying, time enough for three cuts 1.5 s apart.
constexpr std::uint64_t kSize = 64 * kMiB;
const std::string kSlow = "10";

// cut_proxy from 127.0.0.1:<its port> to 127.0.0.1:`upstream_port`, and its port.
struct CutProxy {
  Process process;
  int port = 0;
};

CutProxy start_cut_proxy(const TempDir& dir, int upstream_port) {
  Process p("cut_proxy",
            {NBDTUNNEL_CUT_PROXY, "--listen", "127.0.0.1:0", "--connect",
             "127.0.0.1:" + std::to_string(upstream_port)},
            dir.file("cut_proxy.log"));
  auto m = p.wait_for_log(R"(listening on [^\s]*:(\d+))", Seconds(10));
  if (!m) {
    p.dump_log();
    throw std::runtime_error("cut_proxy did not start");
  }
  const int port = std::stoi((*m)[1]);
  return CutProxy{std::move(p), port};
}

// Resets every connection through the proxy and checks that it hit the channel (at least one
// connection was open: the previous cut's reconnection had happened).
::testing::AssertionResult cut(CutProxy& proxy) {
  const auto mark = proxy.process.log_mark();
  proxy.process.signal(SIGUSR1);
  auto m = proxy.process.wait_for_log(R"(cut (\d+) connections)", Seconds(5), mark);
  if (!m) return ::testing::AssertionFailure() << "cut_proxy did not cut";
  if ((*m)[1] == "0") {
    return ::testing::AssertionFailure() << "the cut found no connection: nothing was reconnected";
  }
  return ::testing::AssertionSuccess();
}

// Takes the link down (`down`) or up, and waits until the proxy says so.
::testing::AssertionResult toggle_link(CutProxy& proxy, bool down) {
  const auto mark = proxy.process.log_mark();
  proxy.process.signal(SIGUSR2);
  if (!proxy.process.wait_for_log(down ? "cut_proxy: down" : "cut_proxy: up", Seconds(5), mark)) {
    return ::testing::AssertionFailure() << "cut_proxy did not go " << (down ? "down" : "up");
  }
  return ::testing::AssertionSuccess();
}

// Waits until migrate reports copied bytes of a disk not yet in sync.
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

// Whether migrate has said that a disk (or every disk) is in sync: a cut after that point is
// not mid-copy.
bool in_sync(const MigrateRun& run) {
  const auto events = run.events();
  return !events_named(events, "disk_ready").empty() || !events_named(events, "ready").empty();
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

// A finished run that completed after `losses` lost and resumed channels.
void expect_completed_after(MigrateRun& run, std::size_t losses, Seconds timeout) {
  auto code = run.wait_exit(timeout);
  ASSERT_TRUE(code) << "migrate did not exit in time";
  const auto events = run.events();
  EXPECT_EQ(*code, 0) << describe(events);
  EXPECT_TRUE(events_named(events, "error").empty()) << describe(events);
  EXPECT_EQ(events_named(events, "channel-lost").size(), losses) << describe(events);
  const auto resumed = events_named(events, "channel-resumed");
  EXPECT_EQ(resumed.size(), losses) << describe(events);
  for (const auto& r : resumed) {
    EXPECT_TRUE(r.contains("outage") && r["outage"].is_number() && r["outage"] >= 0) << r.dump();
  }
  auto s = summary(events);
  ASSERT_TRUE(s) << describe(events);
  EXPECT_EQ(s->value("result", ""), "completed") << s->dump();
  EXPECT_EQ(s->value("channel_losses", -1), static_cast<int>(losses)) << s->dump();
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

// The usual pair of storage daemons, a dest for the destination one (with `dest_args`), and a
// cut_proxy in front of the dest.
struct CutLink {
  QemuHost src, dst;
  TunnelDest dest;
  CutProxy proxy;
};

CutLink start_cut_link(const TempDir& dir, std::uint64_t seed,
                       const std::vector<std::string>& dest_args = {}) {
  StorageHosts s = start_storage_hosts(dir, kSize, seed);
  auto dest = start_migration_dest(dir, s.dst, kDestHostId, "dest", dest_args);
  auto proxy = start_cut_proxy(dir, dest.port);
  return CutLink{std::move(s.src), std::move(s.dst), std::move(dest), std::move(proxy)};
}

TEST(MigrateResume, ThreeResetsMidCopyResumeAndTheCopyIsIdentical) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon", "qemu-system-x86_64");
  TempDir dir;
  // The source is a VM, so that the guest writes (qemu-io through HMP) while the cuts happen.
  make_random_image(dir.file("src0.raw"), kSize, 1001);
  make_zero_image(dir.file("dst0.raw"), kSize);
  auto vm = start_vm_host(dir, "vm-src", raw_disk_args("disk0", dir.file("src0.raw")));
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  auto dest = start_migration_dest(dir, dst);
  auto proxy = start_cut_proxy(dir, dest.port);

  struct Write {
    std::uint64_t offset;
    std::size_t len;
  };
  // Before each cut: a region copied already, one not yet, and one unaligned across 64 KiB.
  const std::vector<Write> writes = {
      {0, 1 << 20}, {kSize - kMiB, 1 << 20}, {(5 << 20) - 512, 4096}};
  auto write = [&](const Write& w) {
    const std::string off = std::to_string(w.offset), len = std::to_string(w.len);
    const auto mark = vm.qemu.process().log_mark();
    auto reply = vm.qmp().hmp("qemu-io disk0 \"write -P 0x5a " + off + " " + len + "\"");
    EXPECT_TRUE(vm.qemu.process().wait_for_log(
        "wrote " + len + "/" + len + " bytes at offset " + off, Seconds(5), mark))
        << "qemu-io write at " << off << " not confirmed; reply: " << reply;
  };

  MigrateRun run(dir, "migrate",
                 migrate_args(vm, proxy.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  for (const Write& w : writes) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    ASSERT_TRUE(run.process().running()) << "migrate ended after a cut\n" << describe(run.events());
    EXPECT_FALSE(in_sync(run)) << "the disk was in sync before the cut: the cut is not mid-copy";
    write(w);
    EXPECT_TRUE(cut(proxy)) << proxy.process.log();
  }
  expect_completed_after(run, 3, Seconds(90));
  EXPECT_GE(proxy.process.count_in_log("accepted connection"), 4U)
      << "the channel did not reconnect after each cut\n"
      << proxy.process.log();
  EXPECT_GE(dest.process.count_in_log("resumed"), 3U) << dest.process.log();
  EXPECT_TRUE(source_is_clean(vm.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));
  EXPECT_TRUE(dest.process.running());

  EXPECT_EQ(vm.qemu.quit(), 0);
  EXPECT_EQ(dst.qemu.quit(), 0);
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  for (const Write& w : writes) {
    EXPECT_TRUE(file_has_pattern(dir.file("dst0.raw"), w.offset, w.len, std::byte{0x5a}));
  }
}

TEST(MigrateResume, StandingSourceCarriesAPlainMirrorAcrossTwoResets) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  // As tests/integration/mirror_test: a destination QEMU exporting disk0 on a UNIX socket, a
  // dest serving it as target "nbd", a source forwarding tunnel.sock to it, here through the
  // proxy; the source QEMU mirrors into an NBD node on tunnel.sock, slowed to 10 MiB/s.
  make_random_image(dir.file("src0.raw"), kSize, 1002);
  std::filesystem::copy_file(dir.file("src0.raw"), dir.file("src0.orig"));
  make_zero_image(dir.file("dst0.raw"), kSize);
  auto dst = Qemu::storage_daemon(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  dst.qmp().execute("nbd-server-start",
                    {{"addr", {{"type", "unix"}, {"data", {{"path", dir.file("dst-nbd.sock")}}}}}});
  dst.qmp().execute("block-export-add", {{"type", "nbd"},
                                         {"id", "exp0"},
                                         {"node-name", "disk0"},
                                         {"name", "disk0"},
                                         {"writable", true}});
  auto dest = start_dest(dir, {"nbd=" + dir.file("dst-nbd.sock")});
  auto proxy = start_cut_proxy(dir, dest.port);
  const std::string tunnel_sock = dir.file("tunnel.sock");
  auto source = start_source(dir, proxy.port, {tunnel_sock + "=nbd"});

  auto src = Qemu::storage_daemon(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  add_nbd_unix_node(src.qmp(), "tgt0", tunnel_sock, "disk0");
  src.qmp().execute("blockdev-mirror", {{"job-id", "m0"},
                                        {"device", "disk0"},
                                        {"target", "tgt0"},
                                        {"sync", "full"},
                                        {"speed", 10 * kMiB}});
  // The job's state and offset now, for the cuts' placing and the failure messages.
  auto job = [&]() -> json {
    const json jobs = src.qmp().execute("query-block-jobs");
    return jobs.empty() ? json::object() : jobs.front();
  };
  const auto deadline = std::chrono::steady_clock::now() + Seconds(30);
  while (job().value("offset", 0ULL) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GT(job().value("offset", 0ULL), 0U) << "the mirror did not start: " << job().dump();
  for (int i = 0; i < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    const json before = job();
    EXPECT_FALSE(before.value("ready", true)) << "the cut is not mid-copy: " << before.dump();
    EXPECT_TRUE(cut(proxy)) << proxy.process.log();
    EXPECT_EQ(job().value("status", ""), "running") << job().dump();
  }

  // Polled rather than waited for as an event: a job that failed is gone at once.
  const auto ready_by = std::chrono::steady_clock::now() + Seconds(60);
  json now = job();
  while (!now.empty() && !now.value("ready", false) &&
         std::chrono::steady_clock::now() < ready_by) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    now = job();
  }
  ASSERT_TRUE(now.value("ready", false)) << "the mirror did not reach ready: " << now.dump() << "\n"
                                         << json(src.qmp().take_events()).dump();
  auto done = cancel_ready_job(src.qmp(), "m0", Seconds(30));
  EXPECT_FALSE(done.contains("error")) << done.dump();
  EXPECT_EQ(done.value("offset", 0ULL), kSize) << done.dump();
  // No BLOCK_JOB_ERROR (an I/O error the job retried or ignored) at any point.
  for (const json& e : src.qmp().take_events()) {
    EXPECT_NE(e.value("event", ""), "BLOCK_JOB_ERROR") << e.dump();
  }
  EXPECT_GE(proxy.process.count_in_log("accepted connection"), 3U)
      << "the source did not reconnect after each cut\n"
      << proxy.process.log();
  EXPECT_GE(dest.process.count_in_log("resumed"), 2U) << dest.process.log();
  EXPECT_TRUE(source.running());
  EXPECT_TRUE(dest.process.running());

  EXPECT_EQ(src.quit(), 0);
  EXPECT_EQ(dst.quit(), 0);
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));
}

TEST(MigrateResume, LinkDownForTenSecondsResumesWithTheDefaultGrace) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  CutLink l = start_cut_link(dir, 1003);
  MigrateRun run(dir, "migrate",
                 migrate_args(l.src, l.proxy.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  ASSERT_TRUE(toggle_link(l.proxy, true));
  const auto down_at = std::chrono::steady_clock::now();
  ASSERT_FALSE(run.wait_exit(Seconds(10))) << "migrate gave up while the link was down\n"
                                           << describe(run.events()) << run.stderr_text();
  EXPECT_FALSE(in_sync(run)) << "the disk was in sync before the link went down";
  ASSERT_TRUE(toggle_link(l.proxy, false));
  expect_completed_after(run, 1, Seconds(60));
  // The source kept trying while the link was down, and the outage it reports is the link's.
  EXPECT_GE(l.proxy.process.count_in_log("reset a new connection: the link is down"), 1U)
      << l.proxy.process.log();
  const auto resumed = events_named(run.events(), "channel-resumed");
  if (!resumed.empty()) {
    EXPECT_GE(resumed.front().value("outage", 0.0), 9.0) << resumed.front().dump();
  }
  EXPECT_GE(std::chrono::steady_clock::now() - down_at, std::chrono::seconds(10));
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));
  EXPECT_TRUE(source_is_clean(l.src.qmp()));
  EXPECT_TRUE(has_no_export(l.dst.qmp()));
  EXPECT_TRUE(l.dest.process.running());
}

TEST(MigrateResume, LinkDownLongerThanTheGraceFailsAndBothHostsAreClean) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  CutLink l = start_cut_link(dir, 1004, {"--resume-timeout", "3"});
  MigrateRun run(dir, "migrate",
                 migrate_args(l.src, l.proxy.port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
  ASSERT_TRUE(wait_copying(run));
  ASSERT_TRUE(toggle_link(l.proxy, true));
  std::this_thread::sleep_for(std::chrono::seconds(8));
  ASSERT_TRUE(toggle_link(l.proxy, false));
  const std::string message = failed_with(run, Seconds(30));
  EXPECT_NE(message.find("not resumed"), std::string::npos) << message;
  EXPECT_TRUE(source_is_clean(l.src.qmp()));
  EXPECT_TRUE(exports_go(l.dst.qmp(), Seconds(10)));
  EXPECT_FALSE(nbd_server_running(l.dst.qmp())) << "the destination QEMU's NBD server still runs";
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));
  EXPECT_TRUE(l.dest.process.running());
}

TEST(MigrateResume, DestinationKilledAndRestartedOnItsPortFailsCleanly) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  StorageHosts h = start_storage_hosts(dir, kSize, 1005);
  // The arguments start_migration_dest gives, so that the restarted daemon finds the same run
  // directory (and the dead one's record of its export) on the same port.
  const std::vector<std::string> dest_args{
      "--qmp", h.dst.tool_qmp, "--run-dir", h.dst.tool_qmp + ".run", "--host-id", kDestHostId};
  std::optional<TunnelDest> dest(start_dest(dir, {}, dest_args, 0, "dest"));
  const int port = dest->port;
  {
    MigrateRun run(dir, "migrate",
                   migrate_args(h.src, port, {"disk0"}, {"--json", "--bandwidth", kSlow}));
    ASSERT_TRUE(wait_copying(run));
    dest->process.kill();
    dest.emplace(start_dest(dir, {}, dest_args, port, "dest-again"));
    const std::string message = failed_with(run, Seconds(30));
    const bool named = message.find("not resumed") != std::string::npos ||
                       message.find("127.0.0.1:" + std::to_string(port)) != std::string::npos;
    EXPECT_TRUE(named) << "the error neither says the channel was not resumed nor names the "
                          "destination: "
                       << message;
  }
  EXPECT_TRUE(dest->process.wait_for_log("removed export nbdtunnel-\\S+ of migration", Seconds(5)))
      << dest->process.log();
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(exports_go(h.dst.qmp(), Seconds(10)));
  EXPECT_FALSE(nbd_server_running(h.dst.qmp())) << "the dead daemon's NBD server still runs";
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("src0.orig")));

  // The restarted daemon serves the next migration.
  auto again = run_migrate(dir, "migrate-again", migrate_args(h.src, port, {"disk0"}, {"--json"}),
                           Seconds(60));
  EXPECT_EQ(again.exit_code, 0) << describe(again.events) << again.stderr_text;
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
  dest->process.signal(SIGTERM);
  EXPECT_EQ(dest->process.wait_exit(Seconds(10)), 0);
}

}  // namespace
}  // namespace nbdtunnel::testing
