// `nbdtunnel migrate` end to end between real QEMUs: every disk arrives byte for byte, guest
// writes during the copy arrive too, a shallow copy lands on the destination's own backing
// chain, and both hosts are left without jobs, nodes or exports.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>

#include "tests/integration/harness/files.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

// True if `a` appears in `seq` in this order (other entries may come between).
::testing::AssertionResult in_order(const std::vector<std::string>& seq,
                                    const std::vector<std::string>& want) {
  auto it = seq.begin();
  for (const auto& w : want) {
    it = std::find(it, seq.end(), w);
    if (it == seq.end()) {
      std::string got;
      for (const auto& s : seq) got += s + " ";
      return ::testing::AssertionFailure()
             << "phase '" << w << "' missing or out of order; got: " << got;
    }
    ++it;
  }
  return ::testing::AssertionSuccess();
}

TEST(MigrateFlow, TwoDiskMigrationIsIdentical) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  constexpr std::uint64_t kSize = 64 * kMiB;
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 101);
  make_random_image(dir.file("src1.raw"), kSize, 102);
  make_zero_image(dir.file("dst0.raw"), kSize);
  make_zero_image(dir.file("dst1.raw"), kSize);
  make_zero_image(dir.file("dst2.raw"), kSize);

  std::vector<std::string> src_args = raw_disk_args("disk0", dir.file("src0.raw"));
  for (auto& a : raw_disk_args("disk1", dir.file("src1.raw"))) src_args.push_back(a);
  auto src = start_storage_host(dir, "qsd-src", src_args);
  std::vector<std::string> dst_args = raw_disk_args("disk0", dir.file("dst0.raw"));
  for (auto& a : raw_disk_args("disk1", dir.file("dst1.raw"))) dst_args.push_back(a);
  for (auto& a : raw_disk_args("spare", dir.file("dst2.raw"))) dst_args.push_back(a);
  auto dst = start_storage_host(dir, "qsd-dst", dst_args);
  auto dest = start_migration_dest(dir, dst);

  auto r =
      run_migrate(dir, "migrate", migrate_args(src, dest.port, {"disk0", "disk1"}, {"--json"}));
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  EXPECT_TRUE(in_order(phases(r.events),
                       {"checks", "prepare", "mirror", "completing", "finishing", "done"}));
  for (const char* disk : {"disk0", "disk1"}) {
    std::optional<json> last_progress;
    bool completed = false;
    for (const auto& e : events_named(r.events, "progress")) {
      if (e.value("disk", "") == disk) last_progress = e;
    }
    for (const auto& e : events_named(r.events, "disk_completed")) {
      completed = completed || e.value("disk", "") == disk;
    }
    ASSERT_TRUE(last_progress) << "no progress event for " << disk << "\n" << describe(r.events);
    // The last one shows the disk in sync: all of it copied.
    EXPECT_TRUE(last_progress->value("ready", false)) << last_progress->dump();
    EXPECT_EQ(last_progress->value("total", 0ULL), kSize) << last_progress->dump();
    EXPECT_EQ(last_progress->value("done", 0ULL), kSize) << last_progress->dump();
    EXPECT_TRUE(completed) << "no disk_completed event for " << disk;
  }
  EXPECT_TRUE(events_named(r.events, "error").empty()) << describe(r.events);
  auto s = summary(r.events);
  ASSERT_TRUE(s) << describe(r.events);
  EXPECT_EQ(s->value("result", ""), "completed");
  EXPECT_EQ(s->value("bytes", 0ULL), 2 * kSize) << s->dump();

  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(files_identical(dir.file("src1.raw"), dir.file("dst1.raw")));
  EXPECT_TRUE(source_is_clean(src.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));

  // The same daemon serves the next migration (disk0 into another destination node).
  auto again =
      run_migrate(dir, "migrate-again", migrate_args(src, dest.port, {"disk0=spare"}, {"--json"}));
  EXPECT_EQ(again.exit_code, 0) << describe(again.events) << again.stderr_text;
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst2.raw")));
  EXPECT_TRUE(source_is_clean(src.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));
  EXPECT_TRUE(dest.process.running());
}

TEST(MigrateFlow, WritesDuringCopyArrive) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon", "qemu-system-x86_64");
  constexpr std::uint64_t kSize = 64 * kMiB;
  struct Write {
    std::uint64_t offset;
    std::size_t len;
    int pattern;
  };
  // During the copy: the first MiB (copied already) and the last (not yet) change.
  const std::vector<Write> during = {{0, 1 << 20, 0x5a}, {kSize - kMiB, 1 << 20, 0x5a}};
  // Once in sync: the middle, and an unaligned write across a 64 KiB boundary.
  const std::vector<Write> in_sync = {{kSize / 2, 1 << 20, 0xa5}, {(5 << 20) - 512, 4096, 0xa5}};

  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 201);
  make_zero_image(dir.file("dst0.raw"), kSize);
  auto vm = start_vm_host(dir, "vm-src", raw_disk_args("disk0", dir.file("src0.raw")));
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  auto dest = start_migration_dest(dir, dst);

  auto write = [&](const Write& w) {
    const std::string off = std::to_string(w.offset), len = std::to_string(w.len);
    char pat[8];
    std::snprintf(pat, sizeof pat, "0x%02x", w.pattern);
    const auto mark = vm.qemu.process().log_mark();
    auto reply =
        vm.qmp().hmp("qemu-io disk0 \"write -P " + std::string(pat) + " " + off + " " + len + "\"");
    EXPECT_TRUE(vm.qemu.process().wait_for_log(
        "wrote " + len + "/" + len + " bytes at offset " + off, Seconds(5), mark))
        << "qemu-io write at " << off << " not confirmed; reply: " << reply;
  };

  const std::string ctl = dir.file("ctl.sock");
  MigrateRun run(
      dir, "migrate",
      migrate_args(vm, dest.port, {"disk0"},
                   {"--json", "--finish", "sync", "--control-socket", ctl, "--bandwidth", "16"}));
  auto copying = run.wait_event(
      [](const json& e) {
        return e.value("event", "") == "progress" && e.value("done", 0ULL) > 0 &&
               !e.value("ready", false);
      },
      Seconds(30));
  ASSERT_TRUE(copying) << "no progress before the copy ended\n" << describe(run.events());
  for (const auto& w : during) write(w);
  {
    ControlClient early(ctl, Seconds(10));
    const json too_soon = early.execute("finish");
    EXPECT_TRUE(too_soon.contains("error"))
        << "finish accepted before the disks are in sync: " << too_soon.dump();
  }

  auto ready =
      run.wait_event([](const json& e) { return e.value("event", "") == "ready"; }, Seconds(60));
  ASSERT_TRUE(ready) << describe(run.events());
  for (const auto& w : in_sync) write(w);

  ControlClient control(ctl, Seconds(10));
  EXPECT_TRUE(control.greeting().contains("QMP")) << control.greeting().dump();
  const json q = control.execute("query-migration");
  ASSERT_TRUE(q.contains("return")) << q.dump();
  EXPECT_EQ(q["return"].value("phase", ""), "ready") << q.dump();
  const json fin = control.execute("finish");
  EXPECT_TRUE(fin.contains("return")) << fin.dump();

  auto code = run.wait_exit(Seconds(60));
  ASSERT_TRUE(code) << "migrate did not exit after finish";
  const auto events = run.events();
  EXPECT_EQ(*code, 0) << describe(events);
  auto s = summary(events);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->value("result", ""), "completed");
  EXPECT_TRUE(source_is_clean(vm.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));

  EXPECT_EQ(vm.qemu.quit(), 0);
  EXPECT_EQ(dst.qemu.quit(), 0);
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  for (const auto& list : {during, in_sync}) {
    for (const auto& w : list) {
      EXPECT_TRUE(file_has_pattern(dir.file("dst0.raw"), w.offset, w.len,
                                   static_cast<std::byte>(w.pattern)));
    }
  }
}

TEST(MigrateFlow, ShallowWithBackingAtDestination) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon", "qemu-img");
  constexpr std::uint64_t kSize = 64 * kMiB;
  TempDir dir;
  // The base exists on both hosts; only the source's overlay holds new data.
  make_random_image(dir.file("base-src.raw"), kSize, 301);
  make_random_image(dir.file("base-dst.raw"), kSize, 301);
  for (const auto& [overlay, base] :
       {std::pair{"src.qcow2", "base-src.raw"}, std::pair{"dst.qcow2", "base-dst.raw"}}) {
    ASSERT_EQ(run_command("qemu-img",
                          {"qemu-img", "create", "-q", "-f", "qcow2", "-b", dir.file(base), "-F",
                           "raw", dir.file(overlay)},
                          dir.file("qemu-img.log"), Seconds(30)),
              0);
  }
  // Data in the source overlay only: 3 MiB at 1 MiB, 64 KiB in the middle, the last 4 KiB.
  ASSERT_EQ(
      run_command("qemu-io",
                  {"qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 3M", "-c",
                   "write -P 0x22 32M 64k", "-c", "write -P 0x33 65532k 4k", dir.file("src.qcow2")},
                  dir.file("qemu-io.log"), Seconds(30)),
      0);

  auto src = start_storage_host(dir, "qsd-src", qcow2_disk_args("disk0", dir.file("src.qcow2")));
  auto dst = start_storage_host(dir, "qsd-dst", qcow2_disk_args("disk0", dir.file("dst.qcow2")));
  auto dest = start_migration_dest(dir, dst);

  auto r =
      run_migrate(dir, "migrate", migrate_args(src, dest.port, {"disk0"}, {"--json", "--shallow"}));
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  auto s = summary(r.events);
  ASSERT_TRUE(s) << describe(r.events);
  EXPECT_EQ(s->value("result", ""), "completed");
  // Only the overlay's data travelled, not the 64 MiB of the base.
  EXPECT_LT(s->value("bytes", kSize), 8 * kMiB) << s->dump();
  EXPECT_TRUE(source_is_clean(src.qmp()));
  EXPECT_TRUE(has_no_export(dst.qmp()));

  EXPECT_EQ(src.qemu.quit(), 0);
  EXPECT_EQ(dst.qemu.quit(), 0);
  EXPECT_EQ(run_command("qemu-img",
                        {"qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", dir.file("src.qcow2"),
                         dir.file("dst.qcow2")},
                        dir.file("qemu-img-compare.log"), Seconds(30)),
            0);
}

}  // namespace
}  // namespace nbdtunnel::testing
