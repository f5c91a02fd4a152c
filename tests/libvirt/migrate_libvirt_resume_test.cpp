// A lost TCP connection under `nbdtunnel migrate --domain` is not a lost libvirt migration:
// bench/tools/cut_proxy sits between migrate and `nbdtunnel dest --libvirt` and resets the
// channel's connection; migrate reconnects, both sides resume every stream, and neither libvirtd
// nor either QEMU notices. Named after the fault: two resets while libvirt copies the disk
// (libvirt's RPC and the disk's NBD connection are open; the memory stream opens later on the
// resumed channel), peer-to-peer (the source libvirtd dials the destination's through the
// channel) and direct (migrate drives both); and one reset once QEMU's memory stream is open.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/libvirt/libvirt_host.hpp"
#include "tests/migrate/migrate_harness.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;
// 64 MiB at 8 MiB/s: about 8 s of disk copy, time enough for two cuts 2 s apart mid-copy.
constexpr std::uint64_t kDiskSize = 64 * kMiB;
const std::string kSlow = "8";

// `nbdtunnel dest --libvirt` inside the destination, plain on loopback (as in
// migrate_libvirt_test), and the port it listens on.
struct LibvirtDest {
  Process process;
  int port = 0;
};

LibvirtDest start_dest(LibvirtHost& host, const std::string& name) {
  Process p = host.spawn(name, {nbdtunnel_binary(), "dest", "--listen", "127.0.0.1:0", "--libvirt",
                                "--host-id", "nbdtunnel-test-destination-host", "--insecure"});
  auto m = p.wait_for_log(R"(listening on [^\s]*:(\d+))", Seconds(15));
  if (!m) {
    p.dump_log();
    throw std::runtime_error("nbdtunnel dest --libvirt did not start");
  }
  const int port = std::stoi((*m)[1]);
  return LibvirtDest{std::move(p), port};
}

// cut_proxy from 127.0.0.1:<its port> to 127.0.0.1:`upstream_port`, outside both namespaces
// (they share the host's network), and its port.
struct CutProxy {
  Process process;
  int port = 0;
};

CutProxy start_cut_proxy(const TempDir& dir, const std::string& name, int upstream_port) {
  Process p(name,
            {NBDTUNNEL_CUT_PROXY, "--listen", "127.0.0.1:0", "--connect",
             "127.0.0.1:" + std::to_string(upstream_port)},
            dir.file(name + ".log"));
  auto m = p.wait_for_log(R"(listening on [^\s]*:(\d+))", Seconds(10));
  if (!m) {
    p.dump_log();
    throw std::runtime_error("cut_proxy did not start");
  }
  const int port = std::stoi((*m)[1]);
  return CutProxy{std::move(p), port};
}

// Resets every connection through the proxy and checks that it hit one (the previous cut's
// reconnection had happened).
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

// Whether the latest progress row of the disk `target` says it is copied (ready): a cut after
// that point is not mid-copy.
bool disk_in_sync(const std::vector<json>& events, const std::string& target) {
  bool ready = false;
  for (const json& e : events_named(events, "progress")) {
    if (e.value("disk", "") == target) ready = e.value("ready", false);
  }
  return ready || !events_named(events, "disk_ready").empty();
}

bool has(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

class MigrateLibvirtResume : public ::testing::Test {
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

  // The dest and the proxy in front of it for one migration of `spec`.
  struct Link {
    LibvirtDest dest;
    CutProxy proxy;
  };

  // Starts `spec` on the source, its empty disks on the destination, a dest and a proxy.
  Link start(const DomainSpec& spec) {
    pair_->source().start_domain(spec);
    pair_->destination().create_disks(spec);
    auto dest = start_dest(pair_->destination(), "dest-" + spec.name);
    auto proxy = start_cut_proxy(dir_, "cut_proxy-" + spec.name, dest.port);
    return Link{std::move(dest), std::move(proxy)};
  }

  // `nbdtunnel migrate --domain` through the proxy, slowed down, plus `mode_args`.
  std::unique_ptr<MigrateRun> migrate(const std::string& domain, const Link& link,
                                      const std::vector<std::string>& mode_args) {
    std::vector<std::string> args = {
        "--domain", domain,        "--dest", "127.0.0.1:" + std::to_string(link.proxy.port),
        "--json",   "--bandwidth", kSlow};
    args.insert(args.end(), mode_args.begin(), mode_args.end());
    return std::make_unique<MigrateRun>(dir_, "migrate-" + domain, args, pair_->source().in_ns({}));
  }

  // After the cuts: the run completed after `losses` lost and resumed channels, one channel
  // throughout, the domain moved with an identical disk, and nothing is left.
  void expect_completed_after(MigrateRun& run, Link& link, const std::string& domain,
                              std::size_t losses) {
    auto code = run.wait_exit(Seconds(60));
    ASSERT_TRUE(code) << "migrate did not exit in time\n"
                      << describe(run.events()) << run.stderr_text() << link.dest.process.log();
    const auto events = run.events();
    const std::string context = describe(events) + run.stderr_text() + "\n--- dest:\n" +
                                link.dest.process.log() + "\n--- proxy:\n" +
                                link.proxy.process.log();
    EXPECT_EQ(*code, 0) << context;
    EXPECT_TRUE(events_named(events, "error").empty()) << context;
    EXPECT_EQ(events_named(events, "channel-lost").size(), losses) << context;
    const auto resumed = events_named(events, "channel-resumed");
    EXPECT_EQ(resumed.size(), losses) << context;
    for (const auto& r : resumed) {
      EXPECT_TRUE(r.contains("outage") && r["outage"].is_number() && r["outage"] >= 0) << r.dump();
    }
    const auto s = summary(events);
    ASSERT_TRUE(s) << context;
    EXPECT_EQ(s->value("result", ""), "completed") << s->dump();
    EXPECT_EQ(s->value("channel_losses", -1), static_cast<int>(losses)) << s->dump();
    // One channel, reconnected after each cut, resumed each time on the destination (each
    // reconnection is accepted as a channel of its own, then handed over).
    Process& dest = link.dest.process;
    EXPECT_GE(link.proxy.process.count_in_log("accepted connection"), losses + 1)
        << link.proxy.process.log();
    EXPECT_EQ(dest.count_in_log(": channel ready"), 1u) << dest.log();
    EXPECT_EQ(dest.count_in_log("handed over to the channel it resumed"), losses) << dest.log();
    EXPECT_EQ(dest.count_in_log("channel resumed after"), losses) << dest.log();
    // QEMU connects its migration stream once: it never noticed a cut.
    EXPECT_EQ(dest.count_in_log("opened to target 'migration/[^/]+/memory'"), 1u) << dest.log();

    EXPECT_TRUE(has(pair_->destination().domains(), domain));
    EXPECT_FALSE(has(pair_->source().domains(), domain));
    pair_->destination().virsh({"destroy", domain});
    const std::string inside = LibvirtHost::disk_path(domain, "sda");
    EXPECT_TRUE(files_identical(pair_->source().path(inside), pair_->destination().path(inside)));
    EXPECT_TRUE(run_dirs_empty(*pair_));
    EXPECT_TRUE(dest.running());
  }

  // Migrates a domain with one 64 MiB disk through two resets mid-copy, the first once the
  // disk's copy has started, the second 2 s later (`mode_args`: --p2p or nothing).
  void migrate_through_two_resets(const std::string& domain, std::uint64_t seed,
                                  const std::vector<std::string>& mode_args) {
    const DomainSpec spec{domain, 128, {{"sda", kDiskSize, seed}}};
    Link link = start(spec);
    auto run = migrate(domain, link, mode_args);
    auto copying = run->wait_event(
        [](const json& e) {
          return e.value("event", "") == "progress" && e.value("disk", "") == "sda" &&
                 e.value("done", 0ULL) > 0 && !e.value("ready", false);
        },
        Seconds(30));
    ASSERT_TRUE(copying) << "the copy did not start\n"
                         << describe(run->events()) << run->stderr_text()
                         << link.dest.process.log();
    for (int i = 0; i < 2; ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::seconds(2));
      ASSERT_TRUE(run->process().running())
          << "migrate ended before cut " << i + 1 << "\n"
          << describe(run->events()) << run->stderr_text() << link.dest.process.log();
      EXPECT_FALSE(disk_in_sync(run->events(), "sda"))
          << "the disk was in sync before cut " << i + 1 << ": the cut is not mid-copy\n"
          << describe(run->events());
      EXPECT_TRUE(cut(link.proxy)) << link.proxy.process.log();
    }
    expect_completed_after(*run, link, domain, 2);
  }

  TempDir dir_;
  LibvirtPair* pair_ = nullptr;
};

TEST_F(MigrateLibvirtResume, PeerToPeerSurvivesTwoResetsMidCopy) {
  migrate_through_two_resets("resume-p2p", 101, {"--p2p"});
}

TEST_F(MigrateLibvirtResume, DirectSurvivesTwoResetsMidCopy) {
  migrate_through_two_resets("resume-direct", 102, {});
}

// The disk copy is over and QEMU's migration stream is open through the channel (dest says so)
// when the connection is reset: the memory stream resumes with the others.
TEST_F(MigrateLibvirtResume, PeerToPeerSurvivesAResetWhileMemoryMoves) {
  const DomainSpec spec{"resume-memory", 128, {{"sda", 16 * kMiB, 103}}};
  Link link = start(spec);
  auto run = migrate(spec.name, link, {"--p2p"});
  auto memory = link.dest.process.wait_for_log("to target 'migration/[^/]+/memory'", Seconds(30));
  ASSERT_TRUE(memory) << "the memory stream did not open\n"
                      << describe(run->events()) << run->stderr_text() << link.dest.process.log();
  ASSERT_TRUE(run->process().running()) << "migrate ended before the cut\n"
                                        << describe(run->events()) << run->stderr_text();
  EXPECT_TRUE(cut(link.proxy)) << link.proxy.process.log();
  expect_completed_after(*run, link, spec.name, 1);
}

}  // namespace
}  // namespace nbdtunnel::testing
