// The libvirt pair itself: two privileged libvirtd daemons in their own mount namespaces, and a
// real libvirt live migration with non-shared disks carried by a hand-wired nbdtunnel
// source/dest pair between them.

#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/libvirt/libvirt_host.hpp"

namespace nbdtunnel::testing {
namespace {

// The <uuid> of <host> in `virsh capabilities`.
std::string capabilities_uuid(const LibvirtHost& host) {
  const std::string caps = host.virsh({"capabilities"});
  const auto open = caps.find("<uuid>");
  const auto close = caps.find("</uuid>", open);
  if (open == std::string::npos || close == std::string::npos) return {};
  return caps.substr(open + 6, close - open - 6);
}

bool has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

TEST(LibvirtPair, BothDaemonsAnswerWithDistinctHostUuids) {
  NBDTUNNEL_REQUIRE_LIBVIRT();
  auto& pair = LibvirtPair::shared();
  std::cerr << "libvirt pair up in " << pair.startup_seconds() << " s\n";
  for (LibvirtHost* host : {&pair.source(), &pair.destination()}) {
    EXPECT_NE(host->virsh({"version"}).find("Running hypervisor: QEMU"), std::string::npos)
        << host->name();
    EXPECT_EQ(capabilities_uuid(*host), host->host_uuid()) << host->name();
  }
  EXPECT_NE(capabilities_uuid(pair.source()), capabilities_uuid(pair.destination()));
  // The sides' run directories are distinct: a file made on one is not on the other.
  pair.source().run({"mkdir", "-p", "/run/nbdtunnel/probe"});
  EXPECT_TRUE(std::filesystem::is_directory(pair.source().path("/run/nbdtunnel/probe")));
  EXPECT_FALSE(std::filesystem::exists(pair.destination().path("/run/nbdtunnel/probe")));
  EXPECT_FALSE(std::filesystem::exists("/run/nbdtunnel/probe"));
}

// Runs one `virsh migrate --live --copy-storage-all` of a fresh domain through a tunnel made
// of `nbdtunnel dest` (destination side) and `nbdtunnel source` (source side), and checks the
// domain moved and its disks arrived byte for byte, a pattern written just before included.
void migrate_through_tunnel(const std::string& tag, const std::vector<std::string>& extra,
                            bool write_during_copy = false) {
  auto& pair = LibvirtPair::shared();
  LibvirtHost& src = pair.source();
  LibvirtHost& dst = pair.destination();
  const std::string run_dir = "/run/nbdtunnel/" + tag;
  const DomainSpec spec{.name = "guest-" + tag,
                        .memory_mib = 128,
                        .disks = {DiskSpec{.target = "sda", .size = 32ull << 20, .seed = 11},
                                  DiskSpec{.target = "sdb", .size = 16ull << 20, .seed = 12}}};

  ASSERT_TRUE(src.run({"mkdir", "-p", run_dir}).ok());
  ASSERT_TRUE(dst.run({"mkdir", "-p", run_dir}).ok());
  dst.create_disks(spec);
  src.start_domain(spec);

  Process dest =
      dst.spawn("tunnel-dest-" + tag,
                {nbdtunnel_binary(), "dest", "--listen", "127.0.0.1:0", "--target",
                 "libvirt=/run/libvirt/libvirt-sock", "--target",
                 "memory=" + run_dir + "/memory.sock", "--target", "nbd=" + run_dir + "/nbd.sock"});
  auto port = dest.wait_for_log(R"(listening on [^\s]*:(\d+))", Seconds{10});
  ASSERT_TRUE(port) << "nbdtunnel dest did not say where it listens";
  Process source =
      src.spawn("tunnel-source-" + tag,
                {nbdtunnel_binary(), "source", "--connect", "127.0.0.1:" + (*port)[1], "--forward",
                 run_dir + "/libvirt.sock=libvirt", "--forward", run_dir + "/memory.sock=memory",
                 "--forward", run_dir + "/nbd.sock=nbd"});
  ASSERT_TRUE(source.wait_for_log("channel connected to", Seconds{10}));

  src.write_pattern(spec.name, "sda", 1 << 20, 1 << 20, 0x5a);
  src.write_pattern(spec.name, "sdb", 3 << 20, 64 << 10, 0xa5);

  std::vector<std::string> migrate{"virsh",
                                   "-c",
                                   LibvirtHost::uri(),
                                   "migrate",
                                   "--live",
                                   "--copy-storage-all",
                                   "--verbose",
                                   spec.name,
                                   "--desturi",
                                   "qemu+unix:///system?socket=" + run_dir + "/libvirt.sock",
                                   "--migrateuri",
                                   "unix://" + run_dir + "/memory.sock",
                                   "--disks-uri",
                                   "unix://" + run_dir + "/nbd.sock"};
  migrate.insert(migrate.end(), extra.begin(), extra.end());
  if (write_during_copy) {
    // Slow enough (4 MiB/s for the disks) that the guest writes land while they are copied.
    migrate.insert(migrate.end(), {"--bandwidth", "4"});
    Process virsh = src.spawn("migrate-" + tag, migrate);
    ASSERT_TRUE(dest.wait_for_log("opened to target 'nbd'", Seconds{30})) << dest.log();
    for (std::uint64_t i = 0; i < 6; ++i) {
      src.write_pattern(spec.name, "sda", (4 + 3 * i) << 20, 256 << 10,
                        static_cast<std::uint8_t>(0x30 + i));
    }
    EXPECT_TRUE(virsh.running()) << "the migration ended before the writes: no test of them";
    auto code = virsh.wait_exit(Seconds{60});
    ASSERT_EQ(code, 0) << virsh.log();
  } else {
    const RunResult r = src.run(migrate, Seconds{60});
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  }

  EXPECT_TRUE(has(dst.domains(), spec.name)) << "the domain does not run on the destination";
  EXPECT_FALSE(has(src.domains(), spec.name)) << "the domain still runs on the source";
  dst.virsh({"destroy", spec.name});
  for (const auto& d : spec.disks) {
    const std::string disk = LibvirtHost::disk_path(spec.name, d.target);
    EXPECT_TRUE(files_identical(src.path(disk), dst.path(disk))) << disk;
  }
  EXPECT_TRUE(file_has_pattern(dst.path(LibvirtHost::disk_path(spec.name, "sda")), 1 << 20, 1 << 20,
                               std::byte{0x5a}));
  EXPECT_TRUE(file_has_pattern(dst.path(LibvirtHost::disk_path(spec.name, "sdb")), 3 << 20,
                               64 << 10, std::byte{0xa5}));
  if (write_during_copy) {
    for (std::uint64_t i = 0; i < 6; ++i) {
      EXPECT_TRUE(file_has_pattern(dst.path(LibvirtHost::disk_path(spec.name, "sda")),
                                   (4 + 3 * i) << 20, 256 << 10, std::byte(0x30 + i)));
    }
  }
  // Everything went through the tunnel: libvirt's RPC, one NBD connection per disk, memory.
  EXPECT_GE(dest.count_in_log("opened to target 'libvirt'"), 1u) << dest.log();
  EXPECT_EQ(dest.count_in_log("opened to target 'nbd'"), spec.disks.size()) << dest.log();
  EXPECT_GE(dest.count_in_log("opened to target 'memory'"), 1u) << dest.log();
  EXPECT_EQ(source.count_in_log(" error "), 0u) << source.log();
  EXPECT_EQ(dest.count_in_log(" error "), 0u) << dest.log();
}

TEST(LibvirtPair, LiveMigrationWithCopyStorageThroughTunnel) {
  NBDTUNNEL_REQUIRE_LIBVIRT();
  migrate_through_tunnel("t1", {});
}

TEST(LibvirtPair, PeerToPeerLiveMigrationWithCopyStorageThroughTunnel) {
  NBDTUNNEL_REQUIRE_LIBVIRT();
  migrate_through_tunnel("t2", {"--p2p"});
}

TEST(LibvirtPair, GuestWritesDuringTheDiskCopyArrive) {
  NBDTUNNEL_REQUIRE_LIBVIRT();
  migrate_through_tunnel("t3", {}, true);
}

TEST(LibvirtPair, DestinationDaemonRestartKeepsItsDomain) {
  NBDTUNNEL_REQUIRE_LIBVIRT();
  LibvirtHost& dst = LibvirtPair::shared().destination();
  const DomainSpec spec{.name = "restart", .memory_mib = 128, .disks = {DiskSpec{.size = 1 << 20}}};
  dst.start_domain(spec);
  const std::vector<pid_t> qemus = dst.qemu_pids();
  ASSERT_EQ(qemus.size(), 1u);
  // libvirtd is pinned to one CPU; its QEMUs are not.
  cpu_set_t mine, qemu;
  ASSERT_EQ(::sched_getaffinity(0, sizeof mine, &mine), 0);
  ASSERT_EQ(::sched_getaffinity(qemus.front(), sizeof qemu, &qemu), 0);
  EXPECT_EQ(CPU_COUNT(&qemu), CPU_COUNT(&mine));

  const pid_t old_daemon = dst.daemon_pid();
  dst.stop_daemon();
  EXPECT_FALSE(process_alive(old_daemon));
  EXPECT_EQ(dst.daemon_pid(), -1);
  EXPECT_FALSE(dst.run({"virsh", "-c", LibvirtHost::uri(), "version"}, Seconds{10}).ok());
  EXPECT_TRUE(process_alive(qemus.front())) << "QEMU died with its libvirtd";

  const auto start = std::chrono::steady_clock::now();
  dst.start_daemon();
  std::cerr << "destination libvirtd restarted in "
            << Seconds(std::chrono::steady_clock::now() - start).count() << " s\n";
  EXPECT_TRUE(has(dst.domains(), spec.name)) << "the restarted daemon lost the running domain";
  dst.virsh({"destroy", spec.name});
  EXPECT_TRUE(dst.qemu_pids().empty());
}

// Last in the file: gtest runs a file's tests in order.
TEST(LibvirtPair, TeardownLeavesNoDaemonOrQemuAlive) {
  NBDTUNNEL_REQUIRE_LIBVIRT();
  auto& pair = LibvirtPair::shared();
  std::vector<pid_t> pids;
  for (LibvirtHost* host : {&pair.source(), &pair.destination()}) {
    // A running domain on each side, so that there is a QEMU to clean up.
    host->start_domain(DomainSpec{.name = "leftover-" + host->name(),
                                  .memory_mib = 128,
                                  .disks = {DiskSpec{.size = 1 << 20}}});
    pids.push_back(host->ns_pid());
    pids.push_back(host->daemon_pid());
    for (pid_t q : host->qemu_pids()) pids.push_back(q);
  }
  ASSERT_EQ(pids.size(), 6u) << "expected a keeper, a daemon and one QEMU per side";
  LibvirtPair::shutdown_shared();
  for (pid_t pid : pids) EXPECT_FALSE(process_alive(pid)) << "pid " << pid << " still alive";
}

}  // namespace
}  // namespace nbdtunnel::testing
