// `nbdtunnel migrate --domain` against two real libvirtd (tests/libvirt/libvirt_host.hpp): a
// live migration of a running TCG domain with non-shared disks, memory, disks and libvirt's RPC
// all through one channel to `nbdtunnel dest --libvirt`. Each test leaves no domain, no run
// directory and no daemon behind.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "test_pki.hpp"
#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/libvirt/libvirt_host.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

// `nbdtunnel dest --libvirt` inside the destination, plain on loopback (--insecure: the test
// owns the machine), and the port it listens on.
struct LibvirtDest {
  Process process;
  int port = 0;
};

// `tls_dir`: the daemon's credentials (mutual TLS) instead of a plain channel.
LibvirtDest start_dest(LibvirtHost& host, const std::string& name,
                       const std::string& tls_dir = "") {
  std::vector<std::string> argv = {nbdtunnel_binary(),
                                   "dest",
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--libvirt",
                                   "--host-id",
                                   "nbdtunnel-test-destination-host"};
  if (tls_dir.empty()) {
    argv.push_back("--insecure");
  } else {
    argv.push_back("--tls-dir");
    argv.push_back(tls_dir);
  }
  Process p = host.spawn(name, argv);
  auto m = p.wait_for_log(R"(listening on [^\s]*:(\d+))", Seconds(15));
  if (!m) {
    p.dump_log();
    throw std::runtime_error("nbdtunnel dest --libvirt did not start");
  }
  const int port = std::stoi((*m)[1]);
  return LibvirtDest{std::move(p), port};
}

std::vector<std::string> migrate_args(const std::string& domain, int port,
                                      std::vector<std::string> extra) {
  std::vector<std::string> args = {"--domain", domain, "--dest",
                                   "127.0.0.1:" + std::to_string(port), "--json"};
  for (auto& a : extra) args.push_back(std::move(a));
  return args;
}

bool has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// After a migration of `spec`: the domain runs on the destination only, and each disk there
// holds what the source image holds. Destroys the destination's copy.
void expect_moved(LibvirtPair& pair, const DomainSpec& spec) {
  EXPECT_TRUE(has(pair.destination().domains(), spec.name));
  EXPECT_FALSE(has(pair.source().domains(), spec.name));
  pair.destination().virsh({"destroy", spec.name});
  for (const auto& d : spec.disks) {
    const std::string inside = LibvirtHost::disk_path(spec.name, d.target);
    EXPECT_TRUE(files_identical(pair.source().path(inside), pair.destination().path(inside)))
        << d.target;
  }
}

class MigrateLibvirt : public ::testing::Test {
 protected:
  void SetUp() override {
    NBDTUNNEL_REQUIRE_LIBVIRT();
    pair_ = &LibvirtPair::shared();
  }
  void TearDown() override {
    if (pair_ == nullptr) return;
    for (LibvirtHost* h : {&pair_->source(), &pair_->destination()}) {
      for (const auto& d : h->domains()) h->run({"virsh", "-c", LibvirtHost::uri(), "destroy", d});
    }
  }
  std::vector<std::string> src_prefix() { return pair_->source().in_ns({}); }

  TempDir dir_;
  LibvirtPair* pair_ = nullptr;
};

TEST_F(MigrateLibvirt, DirectCarriesMemoryTwoDisksAndGuestWritesThroughOneChannel) {
  DomainSpec spec{"direct-two", 128, {{"sda", 48 * kMiB, 11}, {"sdb", 16 * kMiB, 12}}};
  pair_->source().start_domain(spec);
  pair_->destination().create_disks(spec);
  auto dest = start_dest(pair_->destination(), "dest-direct");
  // 64 MiB at 16 MiB/s: seconds of copy for a guest write to land in the middle of.
  MigrateRun run(dir_, "migrate-direct", migrate_args(spec.name, dest.port, {"--bandwidth", "16"}),
                 src_prefix());
  auto progress =
      run.wait_event([](const json& e) { return e.value("event", "") == "progress"; }, Seconds(30));
  ASSERT_TRUE(progress) << run.stdout_text() << run.stderr_text();
  pair_->source().write_pattern(spec.name, "sda", 40 * kMiB, kMiB, 0x5a);
  auto code = run.wait_exit(Seconds(120));
  ASSERT_TRUE(code);
  const auto events = run.events();
  ASSERT_EQ(*code, 0) << describe(events) << run.stderr_text();
  EXPECT_EQ(summary(events)->value("result", ""), "completed");
  for (const char* check :
       {"destination", "libvirt", "hypervisor", "hosts", "domain", "disk sda", "disk sdb"}) {
    EXPECT_EQ(verdict_of(events, check), "pass") << check << "\n" << describe(events);
  }
  const std::vector<std::string> seen = phases(events);
  EXPECT_TRUE(has(seen, "mirror")) << describe(events);
  expect_moved(*pair_, spec);
  EXPECT_TRUE(file_has_pattern(pair_->destination().path(LibvirtHost::disk_path(spec.name, "sda")),
                               40 * kMiB, kMiB, std::byte{0x5a}))
      << "the guest's write during the copy did not reach the destination";
  // libvirt RPC, NBD and the memory stream: streams of one channel.
  EXPECT_EQ(dest.process.count_in_log("channel from .* accepted"), 1u) << dest.process.log();
  EXPECT_GE(dest.process.count_in_log("to target 'libvirt'"), 1u);
  EXPECT_GE(dest.process.count_in_log("to target 'migration/[^/]+/nbd'"), 1u);
  EXPECT_GE(dest.process.count_in_log("to target 'migration/[^/]+/memory'"), 1u);
  EXPECT_TRUE(run_dirs_empty(*pair_));
}

TEST_F(MigrateLibvirt, PeerToPeerWithParallelConnectionsOverMutualTls) {
  DomainSpec spec{"p2p-par", 128, {{"sda", 32 * kMiB, 21}}};
  pair_->source().start_domain(spec);
  pair_->destination().create_disks(spec);
  TestPki pki;
  pki.write_server_dir(dir_.file("pki-server"));
  pki.write_client_dir(dir_.file("pki-client"));
  auto dest = start_dest(pair_->destination(), "dest-p2p", dir_.file("pki-server"));
  auto r =
      run_migrate(dir_, "migrate-p2p",
                  migrate_args(spec.name, dest.port,
                               {"--p2p", "--parallel", "4", "--tls-dir", dir_.file("pki-client")}),
                  Seconds(120), src_prefix());
  ASSERT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  expect_moved(*pair_, spec);
  // The main migration connection and four multifd ones, each a stream to the memory socket.
  EXPECT_GE(dest.process.count_in_log("to target 'migration/[^/]+/memory'"), 5u)
      << dest.process.log();
  EXPECT_EQ(dest.process.count_in_log("channel from .* accepted: TLS client certificate"), 1u)
      << dest.process.log();
  EXPECT_TRUE(run_dirs_empty(*pair_));
}

TEST_F(MigrateLibvirt, CtrlCMidCopyLeavesTheSourceRunningAndTheNextRunWorks) {
  DomainSpec spec{"cancel-me", 128, {{"sda", 64 * kMiB, 31}}};
  pair_->source().start_domain(spec);
  pair_->destination().create_disks(spec);
  auto dest = start_dest(pair_->destination(), "dest-cancel");
  {
    MigrateRun run(dir_, "migrate-cancel", migrate_args(spec.name, dest.port, {"--bandwidth", "4"}),
                   src_prefix());
    ASSERT_TRUE(run.wait_event([](const json& e) { return e.value("event", "") == "progress"; },
                               Seconds(30)))
        << run.stderr_text();
    run.process().signal(SIGINT);
    auto code = run.wait_exit(Seconds(60));
    ASSERT_TRUE(code);
    EXPECT_EQ(*code, 130) << describe(run.events()) << run.stderr_text();
    EXPECT_EQ(summary(run.events())->value("result", ""), "cancelled");
  }
  EXPECT_TRUE(has(pair_->source().domains(), spec.name)) << "the source domain must keep running";
  EXPECT_FALSE(has(pair_->destination().domains(), spec.name));
  EXPECT_TRUE(run_dirs_empty(*pair_));

  auto again = run_migrate(dir_, "migrate-again", migrate_args(spec.name, dest.port, {}),
                           Seconds(120), src_prefix());
  ASSERT_EQ(again.exit_code, 0) << describe(again.events) << again.stderr_text;
  expect_moved(*pair_, spec);
}

// SIGKILL gives migrate no chance to clean up: libvirt's job fails by itself once the tunnel's
// sockets are gone (the checks name it meanwhile), the destination removes its run directory
// with the channel, and the next run removes the source's and migrates.
TEST_F(MigrateLibvirt, AfterSigkillTheNextRunCleansUpAndMigrates) {
  DomainSpec spec{"killed", 128, {{"sda", 64 * kMiB, 91}}};
  pair_->source().start_domain(spec);
  pair_->destination().create_disks(spec);
  auto dest = start_dest(pair_->destination(), "dest-killed");
  {
    MigrateRun run(dir_, "migrate-killed", migrate_args(spec.name, dest.port, {"--bandwidth", "4"}),
                   src_prefix());
    ASSERT_TRUE(run.wait_event([](const json& e) { return e.value("event", "") == "progress"; },
                               Seconds(30)))
        << run.stderr_text();
    run.process().kill();
  }
  EXPECT_TRUE(has(pair_->source().domains(), spec.name)) << "the source keeps running";
  MigrateResult again;
  for (int attempt = 0; attempt < 15; ++attempt) {
    again = run_migrate(dir_, "migrate-after-kill-" + std::to_string(attempt),
                        migrate_args(spec.name, dest.port, {}), Seconds(120), src_prefix());
    // 3: the killed run's job is still on the source, or its half-made domain still on the
    // destination; libvirt removes both by itself.
    if (again.exit_code != 3) break;
    EXPECT_TRUE(verdict_of(again.events, "domain") == "fail" ||
                verdict_of(again.events, "destination domain") == "fail")
        << describe(again.events);
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
  ASSERT_EQ(again.exit_code, 0) << describe(again.events) << again.stderr_text;
  expect_moved(*pair_, spec);
  // The killed run's channel waits to be resumed until at most 10 s after the next channel from
  // its host; the destination removes its directory then.
  ::testing::AssertionResult empty = run_dirs_empty(*pair_);
  for (int i = 0; i < 150 && !empty; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    empty = run_dirs_empty(*pair_);
  }
  EXPECT_TRUE(empty) << "the killed run's directory stays";
}

// Someone else aborts the job (virsh domjobabort): the run fails with libvirt's own message, the
// source keeps running, nothing is left.
TEST_F(MigrateLibvirt, AnAbortBySomeoneElseFailsCleanlyWithLibvirtsMessage) {
  DomainSpec spec{"aborted", 128, {{"sda", 64 * kMiB, 71}}};
  pair_->source().start_domain(spec);
  pair_->destination().create_disks(spec);
  auto dest = start_dest(pair_->destination(), "dest-aborted");
  MigrateRun run(dir_, "migrate-aborted", migrate_args(spec.name, dest.port, {"--bandwidth", "4"}),
                 src_prefix());
  ASSERT_TRUE(
      run.wait_event([](const json& e) { return e.value("event", "") == "progress"; }, Seconds(30)))
      << run.stderr_text();
  pair_->source().virsh({"domjobabort", spec.name});
  auto code = run.wait_exit(Seconds(60));
  ASSERT_TRUE(code);
  const auto events = run.events();
  EXPECT_EQ(*code, 1) << describe(events) << run.stderr_text();
  EXPECT_EQ(summary(events)->value("result", ""), "failed");
  const auto errors = events_named(events, "error");
  ASSERT_EQ(errors.size(), 1u) << "the first error only\n" << describe(events);
  EXPECT_NE(errors[0].value("message", "").find("libvirt: "), std::string::npos)
      << errors[0].dump();
  EXPECT_TRUE(has(pair_->source().domains(), spec.name));
  EXPECT_FALSE(has(pair_->destination().domains(), spec.name));
  EXPECT_TRUE(run_dirs_empty(*pair_));
}

// What management layers ask for (OpenStack's PERSIST_DEST | UNDEFINE_SOURCE): a persistent
// domain ends defined on the destination only.
TEST_F(MigrateLibvirt, PersistentAndUndefineSourceMoveTheDefinition) {
  DomainSpec spec{"persist", 128, {{"sda", 16 * kMiB, 81}}};
  for (const auto& d : spec.disks) {
    pair_->source().create_image(LibvirtHost::disk_path(spec.name, d.target), d.size, d.seed);
  }
  const std::string xml_file = dir_.file("persist.xml");
  std::ofstream(xml_file) << LibvirtHost::domain_xml(spec);
  pair_->source().virsh({"define", xml_file});
  pair_->source().virsh({"start", spec.name});
  pair_->destination().create_disks(spec);
  auto dest = start_dest(pair_->destination(), "dest-persist");
  auto r = run_migrate(dir_, "migrate-persist",
                       migrate_args(spec.name, dest.port,
                                    {"--p2p", "--persistent", "--undefine-source", "--compressed"}),
                       Seconds(120), src_prefix());
  ASSERT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  const std::string defined_dst =
      pair_->destination().virsh({"list", "--all", "--persistent", "--name"});
  const std::string defined_src = pair_->source().virsh({"list", "--all", "--name"});
  EXPECT_NE(defined_dst.find(spec.name), std::string::npos) << defined_dst;
  EXPECT_EQ(defined_src.find(spec.name), std::string::npos) << defined_src;
  expect_moved(*pair_, spec);
  pair_->destination().virsh({"undefine", spec.name});
  EXPECT_TRUE(run_dirs_empty(*pair_));
}

// --xml gives the destination other disk paths (checked there, copied there), --dname a new name.
TEST_F(MigrateLibvirt, DestinationXmlAndNameMoveTheDiskElsewhere) {
  DomainSpec spec{"xml-src", 128, {{"sda", 16 * kMiB, 61}}};
  pair_->source().start_domain(spec);
  const std::string src_path = LibvirtHost::disk_path(spec.name, "sda");
  const std::string other = "/var/lib/libvirt/images/xml-elsewhere.raw";
  std::string xml = pair_->source().virsh({"dumpxml", "--migratable", spec.name});
  const auto at = xml.find(src_path);
  ASSERT_NE(at, std::string::npos) << xml;
  xml.replace(at, src_path.size(), other);
  const std::string xml_file = dir_.file("dest.xml");
  std::ofstream(xml_file) << xml;
  pair_->destination().create_image(other, 16 * kMiB);
  auto dest = start_dest(pair_->destination(), "dest-xml");
  auto r =
      run_migrate(dir_, "migrate-xml",
                  migrate_args(spec.name, dest.port, {"--xml", xml_file, "--dname", "xml-moved"}),
                  Seconds(120), src_prefix());
  ASSERT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  const auto check = check_named(r.events, "disk sda");
  ASSERT_TRUE(check);
  EXPECT_NE(check->value("detail", "").find("→ " + other), std::string::npos) << check->dump();
  EXPECT_TRUE(has(pair_->destination().domains(), "xml-moved"));
  EXPECT_FALSE(has(pair_->source().domains(), spec.name));
  pair_->destination().virsh({"destroy", "xml-moved"});
  EXPECT_TRUE(files_identical(pair_->source().path(src_path), pair_->destination().path(other)));
  EXPECT_TRUE(run_dirs_empty(*pair_));
}

TEST_F(MigrateLibvirt, CheckOnlyNamesAMissingAndATooSmallDestinationImage) {
  DomainSpec spec{"checks", 128, {{"sda", 32 * kMiB, 41}, {"sdb", 16 * kMiB, 42}}};
  pair_->source().start_domain(spec);
  // sda half the size it must be, sdb not there at all.
  pair_->destination().create_image(LibvirtHost::disk_path(spec.name, "sda"), 16 * kMiB);
  std::filesystem::remove(pair_->destination().path(LibvirtHost::disk_path(spec.name, "sdb")));
  auto dest = start_dest(pair_->destination(), "dest-checks");
  auto r = run_migrate(dir_, "migrate-checks", migrate_args(spec.name, dest.port, {"--check-only"}),
                       Seconds(60), src_prefix());
  EXPECT_EQ(r.exit_code, 3) << describe(r.events) << r.stderr_text;
  const auto sda = check_named(r.events, "disk sda");
  const auto sdb = check_named(r.events, "disk sdb");
  ASSERT_TRUE(sda && sdb) << describe(r.events);
  EXPECT_EQ(sda->value("verdict", ""), "fail");
  EXPECT_NE(sda->value("detail", "").find("less than the source disk"), std::string::npos)
      << sda->dump();
  EXPECT_EQ(sdb->value("verdict", ""), "fail");
  EXPECT_NE(
      sdb->value("detail", "").find(LibvirtHost::disk_path(spec.name, "sdb") + " does not exist"),
      std::string::npos)
      << sdb->dump();
  EXPECT_TRUE(has(pair_->source().domains(), spec.name)) << "checks change nothing";
  EXPECT_TRUE(run_dirs_empty(*pair_));
}

TEST_F(MigrateLibvirt, AStoppedDestinationLibvirtdFailsTheChecksAndSaysSo) {
  DomainSpec spec{"no-dest-libvirtd", 128, {{"sda", 16 * kMiB, 51}}};
  pair_->source().start_domain(spec);
  pair_->destination().create_disks(spec);
  auto dest = start_dest(pair_->destination(), "dest-stopped");
  pair_->destination().stop_daemon();
  auto r = run_migrate(dir_, "migrate-stopped", migrate_args(spec.name, dest.port, {}), Seconds(60),
                       src_prefix());
  pair_->destination().start_daemon();
  EXPECT_EQ(r.exit_code, 3) << describe(r.events) << r.stderr_text;
  const auto libvirt = check_named(r.events, "libvirt");
  ASSERT_TRUE(libvirt) << describe(r.events);
  EXPECT_EQ(libvirt->value("verdict", ""), "fail");
  EXPECT_NE(libvirt->value("detail", "").find("destination"), std::string::npos) << libvirt->dump();
  EXPECT_TRUE(has(pair_->source().domains(), spec.name));
  EXPECT_TRUE(run_dirs_empty(*pair_));
}

}  // namespace
}  // namespace nbdtunnel::testing
