// `nbdtunnel migrate` refuses what cannot work before it touches anything: each pre-migration
// check failing on its own (exit 3, a "fail" verdict on that check), bad input (exit 2), and a
// passing --check-only that changes nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/nbd_servers.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::uint64_t kSize = 16 * kMiB;

// The destination's disk0 as each test wants it.
enum class DestDisk { fine, missing, too_small, read_only };

struct Hosts {
  QemuHost src;
  QemuHost dst;
  TunnelDest dest;
};

Hosts start_hosts(const TempDir& dir, DestDisk disk = DestDisk::fine,
                  const std::string& dest_host_id = kDestHostId) {
  make_random_image(dir.file("src0.raw"), kSize, 501);
  make_zero_image(dir.file("dst0.raw"), disk == DestDisk::too_small ? kSize / 2 : kSize);
  auto src = start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  std::vector<std::string> dst_args;
  if (disk != DestDisk::missing) {
    dst_args = raw_disk_args("disk0", dir.file("dst0.raw"), disk == DestDisk::read_only);
  }
  auto dst = start_storage_host(dir, "qsd-dst", dst_args);
  auto dest = start_migration_dest(dir, dst, dest_host_id);
  return Hosts{std::move(src), std::move(dst), std::move(dest)};
}

// --check-only --json on disk0.
MigrateResult check_only(const TempDir& dir, Hosts& h,
                         const std::vector<std::string>& disks = {"disk0"}) {
  return run_migrate(dir, "check",
                     migrate_args(h.src, h.dest.port, disks, {"--json", "--check-only"}),
                     Seconds(30));
}

// Exit 3, `check` failed, a summary "failed", and nothing created on either side.
void expect_check_fails(Hosts& h, const MigrateResult& r, const std::string& check) {
  EXPECT_EQ(r.exit_code, 3) << describe(r.events) << r.stderr_text;
  EXPECT_EQ(verdict_of(r.events, check), "fail") << describe(r.events);
  auto s = summary(r.events);
  ASSERT_TRUE(s) << describe(r.events);
  EXPECT_EQ(s->value("result", ""), "failed");
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

// Exit 2 with an error event whose message contains `words`.
void expect_usage_error(const MigrateResult& r, const std::string& words) {
  EXPECT_EQ(r.exit_code, 2) << describe(r.events) << r.stderr_text;
  auto errors = events_named(r.events, "error");
  ASSERT_FALSE(errors.empty()) << describe(r.events) << r.stderr_text;
  EXPECT_NE(errors.front().value("message", "").find(words), std::string::npos)
      << "expected '" << words << "' in " << errors.front().dump();
}

TEST(MigrateChecks, SameHostIsRefused) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir, DestDisk::fine, "");  // the default id: this machine's
  auto r = check_only(dir, h);
  expect_check_fails(h, r, "not the same host");
  // A real migration is refused the same way, before anything is prepared.
  auto m = run_migrate(dir, "migrate", migrate_args(h.src, h.dest.port, {"disk0"}, {"--json"}),
                       Seconds(30));
  expect_check_fails(h, m, "not the same host");
}

TEST(MigrateChecks, DestinationDiskMissing) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir, DestDisk::missing);
  expect_check_fails(h, check_only(dir, h), "disk disk0 on destination");
}

TEST(MigrateChecks, DestinationDiskTooSmall) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir, DestDisk::too_small);
  expect_check_fails(h, check_only(dir, h), "disk disk0 size");
}

TEST(MigrateChecks, DestinationDiskReadOnly) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir, DestDisk::read_only);
  expect_check_fails(h, check_only(dir, h), "disk disk0 writable");
}

TEST(MigrateChecks, DestinationWithoutQmpFailsChecks) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir);
  // A daemon that only forwards to fixed targets cannot prepare disks.
  auto plain = start_dest(dir, {"nbd=" + dir.file("nowhere.sock")}, {"--host-id", kDestHostId}, 0,
                          "dest-plain");
  auto r = run_migrate(dir, "check",
                       migrate_args(h.src, plain.port, {"disk0"}, {"--json", "--check-only"}),
                       Seconds(30));
  expect_check_fails(h, r, "disk disk0 on destination");
  auto c = check_named(r.events, "disk disk0 on destination");
  ASSERT_TRUE(c);
  EXPECT_NE(c->value("detail", "").find("--qmp"), std::string::npos) << c->dump();
}

// True if the first `n` bytes of both files are equal.
::testing::AssertionResult same_prefix(const std::string& a, const std::string& b,
                                       std::uint64_t n) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  for (std::uint64_t off = 0; off < n; off += ba.size()) {
    const auto len = static_cast<std::streamsize>(std::min<std::uint64_t>(ba.size(), n - off));
    if (!fa.read(ba.data(), len) || !fb.read(bb.data(), len)) {
      return ::testing::AssertionFailure() << "short read at " << off;
    }
    if (!std::equal(ba.begin(), ba.begin() + len, bb.begin())) {
      return ::testing::AssertionFailure() << a << " and " << b << " differ in the MiB at " << off;
    }
  }
  return ::testing::AssertionSuccess();
}

// The size check warns, not fails, when the destination is larger ("the tail is left as is"),
// and --force is offered to go ahead.
// BUG (engine, see the report): with --force the mirror then always fails, because
// blockdev-mirror refuses a target of another size ("Source and target image have different
// sizes"), so the warning promises a migration that cannot happen. Fails until the engine
// either refuses a larger destination outright or mirrors into a view of the source's size.
TEST(MigrateChecks, LargerDestinationDiskNeedsForce) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 502);
  make_zero_image(dir.file("dst0.raw"), 2 * kSize);
  auto src = start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  auto dest = start_migration_dest(dir, dst);
  auto r =
      run_migrate(dir, "migrate", migrate_args(src, dest.port, {"disk0"}, {"--json"}), Seconds(30));
  EXPECT_EQ(r.exit_code, 3) << describe(r.events);
  EXPECT_EQ(verdict_of(r.events, "disk disk0 size"), "warn") << describe(r.events);
  EXPECT_TRUE(has_no_export(dst.qmp()));
  auto forced =
      run_migrate(dir, "migrate-forced",
                  migrate_args(src, dest.port, {"disk0"}, {"--json", "--force"}), Seconds(30));
  EXPECT_EQ(forced.exit_code, 0) << describe(forced.events) << forced.stderr_text;
  // The source's bytes arrive; the tail beyond them is left as it was.
  EXPECT_TRUE(source_is_clean(src.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));
  EXPECT_TRUE(same_prefix(dir.file("src0.raw"), dir.file("dst0.raw"), kSize));
  EXPECT_TRUE(file_has_pattern(dir.file("dst0.raw"), kSize, kSize, std::byte{0}));
}

TEST(MigrateChecks, BlockJobAlreadyOnDisk) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir);
  // Someone else's mirror on disk0, crawling into a null device; its job id is the node name.
  h.src.qmp().execute("blockdev-add",
                      {{"driver", "null-co"}, {"node-name", "sink"}, {"size", kSize}});
  h.src.qmp().execute("blockdev-mirror", {{"job-id", "disk0"},
                                          {"device", "disk0"},
                                          {"target", "sink"},
                                          {"sync", "full"},
                                          {"speed", 4096}});
  auto r = check_only(dir, h);
  EXPECT_EQ(r.exit_code, 3) << describe(r.events) << r.stderr_text;
  EXPECT_EQ(verdict_of(r.events, "no block job on disk0"), "fail") << describe(r.events);
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
  // The other job is left alone.
  const json jobs = h.src.qmp().execute("query-block-jobs");
  ASSERT_EQ(jobs.size(), 1U) << jobs.dump();
  EXPECT_EQ(jobs[0].value("device", ""), "disk0");
  h.src.qmp().execute("block-job-cancel", {{"device", "disk0"}, {"force", true}});
}

TEST(MigrateChecks, UnknownSourceDiskExits2) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir);
  auto r = check_only(dir, h, {"nosuchdisk"});
  expect_usage_error(r, "nosuchdisk");
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

TEST(MigrateChecks, DestinationUnreachableExits2) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 501);
  auto src = start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  const int port = closed_local_port();
  auto r = run_migrate(dir, "migrate", migrate_args(src, port, {"disk0"}, {"--json"}), Seconds(30));
  expect_usage_error(r, "unreachable");
  EXPECT_TRUE(source_is_clean(src.qmp()));
}

TEST(MigrateChecks, WrongQmpPathExits2) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir);
  auto args = migrate_args(h.src, h.dest.port, {"disk0"}, {"--json"});
  args[1] = dir.file("no-such.qmp");
  auto r = run_migrate(dir, "migrate", args, Seconds(30));
  expect_usage_error(r, dir.file("no-such.qmp"));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

TEST(MigrateChecks, NotAQmpSocketExits2) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon", "qemu-nbd");
  TempDir dir;
  auto h = start_hosts(dir);
  // A UNIX socket served by something else: qemu-nbd speaks NBD, not QMP.
  make_zero_image(dir.file("nbd.raw"), kMiB);
  auto nbd = start_qemu_nbd(dir, dir.file("nbd.sock"), dir.file("nbd.raw"), "x");
  auto args = migrate_args(h.src, h.dest.port, {"disk0"}, {"--json"});
  args[1] = dir.file("nbd.sock");
  const auto start = std::chrono::steady_clock::now();
  auto r = run_migrate(dir, "migrate", args, Seconds(40));
  const Seconds took = std::chrono::steady_clock::now() - start;
  expect_usage_error(r, dir.file("nbd.sock"));
  EXPECT_LT(took.count(), 15.0) << "took " << took.count() << " s to give up";
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

// A migration id is used by the destination in QEMU ids and in a socket path.
// BUG (engine, see the report): --id is not validated. 'a b' gets as far as PREPARE and fails
// there with QEMU's "Invalid block export id" (exit 1); 'x/../y' is pasted into the
// destination's socket path (run-dir/nbd-x/../y.sock) and reaches nbd-server-start. Both should
// be refused up front as bad input (exit 2), and the destination should refuse such ids too.
TEST(MigrateChecks, InvalidMigrationIdExits2) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir);
  int n = 0;
  for (const std::string id : {"a b", "x/../y"}) {
    auto r = run_migrate(dir, "migrate-" + std::to_string(++n),
                         migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--id", id}),
                         Seconds(30));
    EXPECT_EQ(r.exit_code, 2) << "--id '" << id << "'\n" << describe(r.events) << r.stderr_text;
    EXPECT_TRUE(source_is_clean(h.src.qmp()));
    EXPECT_TRUE(has_no_export(h.dst.qmp()));
  }
  // And the destination is still usable.
  auto ok = run_migrate(
      dir, "migrate-ok",
      migrate_args(h.src, h.dest.port, {"disk0"}, {"--json", "--id", "vm-1.disks"}), Seconds(30));
  EXPECT_EQ(ok.exit_code, 0) << describe(ok.events) << ok.stderr_text;
}

// Two source disks into one destination node would interleave two copies on one disk.
// BUG (engine, see the report, minor): main.cpp refuses a source node given twice but not a
// destination node given twice; all checks pass (--check-only says 0) and the run fails only at
// PREPARE, exit 1, on QEMU's "NBD server already has export named 'disk0'". No data is harmed.
// Fails until the CLI refuses it (exit 2).
TEST(MigrateChecks, DuplicateDestinationNodeExits2) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 511);
  make_random_image(dir.file("src1.raw"), kSize, 512);
  make_zero_image(dir.file("dst0.raw"), kSize);
  std::vector<std::string> src_args = raw_disk_args("disk0", dir.file("src0.raw"));
  for (auto& a : raw_disk_args("disk1", dir.file("src1.raw"))) src_args.push_back(a);
  auto src = start_storage_host(dir, "qsd-src", src_args);
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  auto dest = start_migration_dest(dir, dst);
  auto r =
      run_migrate(dir, "migrate",
                  migrate_args(src, dest.port, {"disk0", "disk1=disk0"}, {"--json"}), Seconds(30));
  EXPECT_EQ(r.exit_code, 2) << describe(r.events) << r.stderr_text;
  EXPECT_TRUE(source_is_clean(src.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));
  EXPECT_TRUE(file_has_pattern(dir.file("dst0.raw"), 0, kSize, std::byte{0}))
      << "the destination disk was written";
}

TEST(MigrateChecks, ControlSocketInUseExits2) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir);
  // Another migration (or anything) listens there already.
  auto busy = RawSocket::listen_unix(dir.file("ctl.sock"));
  auto r = run_migrate(dir, "migrate",
                       migrate_args(h.src, h.dest.port, {"disk0"},
                                    {"--json", "--control-socket", dir.file("ctl.sock")}),
                       Seconds(30));
  expect_usage_error(r, "ctl.sock");
  EXPECT_TRUE(std::filesystem::exists(dir.file("ctl.sock"))) << "someone else's socket removed";
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
}

TEST(MigrateChecks, CheckOnlyPassesAndChangesNothing) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  auto h = start_hosts(dir);
  const json src_nodes = h.src.qmp().execute("query-named-block-nodes", {{"flat", true}});
  const json dst_nodes = h.dst.qmp().execute("query-named-block-nodes", {{"flat", true}});
  auto r = check_only(dir, h);
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  const auto checks = events_named(r.events, "check");
  EXPECT_FALSE(checks.empty());
  for (const auto& c : checks) EXPECT_EQ(c.value("verdict", ""), "pass") << c.dump();
  for (const char* name :
       {"destination reachable", "not the same host", "QEMU versions", "disk disk0 on source",
        "no block job on disk0", "disk disk0 size", "disk disk0 writable"}) {
    EXPECT_TRUE(check_named(r.events, name)) << "no check '" << name << "'\n" << describe(r.events);
  }
  auto s = summary(r.events);
  ASSERT_TRUE(s) << describe(r.events);
  EXPECT_EQ(s->value("result", ""), "checked");
  for (const auto& p : phases(r.events)) {
    EXPECT_TRUE(p == "checks" || p == "done") << "phase '" << p << "' in a check-only run";
  }
  EXPECT_TRUE(source_is_clean(h.src.qmp()));
  EXPECT_TRUE(has_no_export(h.dst.qmp()));
  EXPECT_EQ(h.src.qmp().execute("query-named-block-nodes", {{"flat", true}}).size(),
            src_nodes.size());
  EXPECT_EQ(h.dst.qmp().execute("query-named-block-nodes", {{"flat", true}}).size(),
            dst_nodes.size());
  // The destination disk was not written.
  EXPECT_TRUE(file_has_pattern(dir.file("dst0.raw"), 0, kSize, std::byte{0}));
}

}  // namespace
}  // namespace nbdtunnel::testing
