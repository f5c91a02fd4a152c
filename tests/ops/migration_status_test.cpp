// `nbdtunnel status` during a real `nbdtunnel migrate`: the destination shows the channel that
// prepared the migration, the migration by id, and its stream with the disk's bytes; once the
// migration is finished, neither is left.
#include <gtest/gtest.h>

#include <thread>

#include "tests/integration/harness/files.hpp"
#include "tests/migrate/migrate_harness.hpp"
#include "tests/ops/ops_tools.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kSize = 16 << 20;

TEST(MigrationStatus, AMigrationInSyncIsListedWithItsStreamAndGoneAfterFinish) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 31);
  make_zero_image(dir.file("dst0.raw"), kSize);
  auto src = start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  const std::string dest_ctl = dir.file("dest-ctl.sock");
  auto dest = start_migration_dest(dir, dst, kDestHostId, "dest", {"--control-socket", dest_ctl});

  const std::string ctl = dir.file("migrate-ctl.sock");
  MigrateRun run(
      dir, "migrate",
      migrate_args(src, dest.port, {"disk0"},
                   {"--json", "--finish", "sync", "--control-socket", ctl, "--id", "ops-m1"}));
  auto ready =
      run.wait_event([](const json& e) { return e.value("event", "") == "ready"; }, Seconds(60));
  ASSERT_TRUE(ready) << describe(run.events());

  const auto machine = capture(
      dir, "status-json", {nbdtunnel_binary(), "status", "--control-socket", dest_ctl, "--json"});
  ASSERT_EQ(machine.exit, 0) << machine.output;
  const json status = json::parse(machine.output);
  const json* owner = nullptr;
  for (const json& ch : status["threads"][0]["channels"]) {
    if (!ch["migrations"].empty()) owner = &ch;
  }
  ASSERT_NE(owner, nullptr) << status.dump();
  EXPECT_EQ((*owner)["migrations"], json::parse(R"([{"id":"ops-m1","kind":"qmp"}])"));
  std::uint64_t received = 0;
  for (const json& s : (*owner)["streams"]) {
    if (s["target"] == "migration/ops-m1") received += s["bytes_received"].get<std::uint64_t>();
  }
  EXPECT_GE(received, kSize) << owner->dump();
  const auto human =
      capture(dir, "status", {nbdtunnel_binary(), "status", "--control-socket", dest_ctl});
  EXPECT_NE(human.output.find("migration ops-m1 (qmp)"), std::string::npos) << human.output;

  ControlClient control(ctl, Seconds(10));
  EXPECT_TRUE(control.execute("finish").contains("return"));
  EXPECT_EQ(run.wait_exit(Seconds(60)), 0) << describe(run.events());

  // The channel closes with the run; the daemon forgets it.
  std::string after;
  for (int i = 0; i < 100; ++i) {
    after = capture(dir, "status-after-" + std::to_string(i),
                    {nbdtunnel_binary(), "status", "--control-socket", dest_ctl})
                .output;
    if (after.find("no channels") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(after.find("no channels"), std::string::npos) << after;
  EXPECT_EQ(after.find("ops-m1"), std::string::npos) << after;
  EXPECT_EQ(src.qemu.quit(), 0);
  EXPECT_EQ(dst.qemu.quit(), 0);
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
}

}  // namespace
}  // namespace nbdtunnel::testing
