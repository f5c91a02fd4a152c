// The Debian package, as an operator gets it: cpack packs this build tree (as scripts/package.sh
// does a fresh clone's), the test unpacks it into a temporary root with dpkg-deb -x and runs what
// is inside: the binary, the unit file through systemd-analyze, the example config, and a real
// mirror of a disk through the unpacked dest and source.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <regex>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/qemu.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/ops/ops_tools.hpp"

namespace nbdtunnel::testing {
namespace {

// The package, built and unpacked once for all tests of this binary.
struct Unpacked {
  TempDir dir;
  std::string deb;
  std::string root;
  std::string binary() const { return root + "/usr/bin/nbdtunnel"; }
};

class Package : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto p = std::make_unique<Unpacked>();
    const auto packed =
        capture(p->dir, "cpack",
                {NBDTUNNEL_CPACK, "--config", NBDTUNNEL_BUILD_DIR "/CPackConfig.cmake", "-G", "DEB",
                 "-B", p->dir.file("out")},
                Seconds(120));
    if (packed.exit != 0) {
      setup_error_ = "cpack failed:\n" + packed.output;
      return;
    }
    for (const auto& e : std::filesystem::directory_iterator(p->dir.file("out"))) {
      if (e.path().extension() == ".deb") p->deb = e.path().string();
    }
    p->root = p->dir.file("root");
    const auto unpacked = capture(p->dir, "dpkg-deb", {"dpkg-deb", "-x", p->deb, p->root});
    if (p->deb.empty() || unpacked.exit != 0) {
      setup_error_ = "no package, or dpkg-deb -x failed:\n" + unpacked.output;
      return;
    }
    package_ = std::move(p);
  }
  static void TearDownTestSuite() { package_.reset(); }

  void SetUp() override {
    NBDTUNNEL_REQUIRE_TOOLS("dpkg-deb", "dpkg-shlibdeps");
    ASSERT_TRUE(package_) << setup_error_;
  }

  static const Unpacked& pkg() { return *package_; }

 private:
  static inline std::unique_ptr<Unpacked> package_;
  static inline std::string setup_error_;
};

TEST_F(Package, HoldsTheBinaryUnitManPageExamplesAndScript) {
  for (const char* file :
       {"/usr/bin/nbdtunnel", "/usr/lib/systemd/system/nbdtunnel-dest.service",
        "/usr/share/man/man1/nbdtunnel.1", "/usr/share/doc/nbdtunnel/examples/dest.conf",
        "/usr/share/doc/nbdtunnel/examples/source.conf", "/usr/share/nbdtunnel/make-certs.sh"}) {
    EXPECT_TRUE(std::filesystem::is_regular_file(pkg().root + file)) << file;
  }
}

TEST_F(Package, DependsComesFromTheLinkedLibraries) {
  TempDir dir;
  const auto field = capture(dir, "depends", {"dpkg-deb", "-f", pkg().deb, "Depends"});
  ASSERT_EQ(field.exit, 0) << field.output;
  // What the binary links (dpkg-shlibdeps found them), not a list written by hand.
  for (const char* lib : {"libc6", "liburing2", "libssl3", "libvirt0", "libstdc++6"}) {
    EXPECT_NE(field.output.find(lib), std::string::npos) << field.output;
  }
}

TEST_F(Package, VersionRunsFromTheUnpackedRoot) {
  TempDir dir;
  const auto v = capture(dir, "version", {pkg().binary(), "--version"});
  EXPECT_EQ(v.exit, 0);
  EXPECT_EQ(v.output, std::string("nbdtunnel ") + NBDTUNNEL_VERSION + "\n");
}

TEST_F(Package, TheUnitFileVerifiesClean) {
  NBDTUNNEL_REQUIRE_TOOLS("systemd-analyze");
  TempDir dir;
  // The unit names /usr/bin/nbdtunnel, which is not installed here: point it into the root.
  std::string unit = read_file(pkg().root + "/usr/lib/systemd/system/nbdtunnel-dest.service");
  ASSERT_NE(unit.find("ExecStart=/usr/bin/nbdtunnel dest --config /etc/nbdtunnel/dest.conf"),
            std::string::npos);
  unit = std::regex_replace(unit, std::regex("/usr/bin/nbdtunnel"), pkg().binary());
  write_file(dir.file("nbdtunnel-dest.service"), unit);
  // Documentation=man:nbdtunnel(1) is checked against the packaged man page.
  ::setenv("MANPATH", (pkg().root + "/usr/share/man").c_str(), 1);
  const auto verify =
      capture(dir, "verify", {"systemd-analyze", "verify", dir.file("nbdtunnel-dest.service")});
  ::unsetenv("MANPATH");
  EXPECT_EQ(verify.exit, 0) << verify.output;
  EXPECT_EQ(verify.output, "") << "systemd-analyze verify is not silent";
  // systemd's own rating of the sandbox: 2.6 ("OK") when written; fail if it gets looser.
  const auto security = capture(dir, "security",
                                {"systemd-analyze", "security", "--offline=yes", "--threshold=30",
                                 dir.file("nbdtunnel-dest.service")});
  EXPECT_EQ(security.exit, 0) << security.output;
  for (const char* hardening :
       {"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
        "RuntimeDirectory=nbdtunnel", "CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n"}) {
    EXPECT_NE(unit.find(hardening), std::string::npos) << hardening;
  }
}

TEST_F(Package, TheExampleDestConfigIsAcceptedAsShipped) {
  TempDir dir;
  // Only what cannot work here changes: the port, the run directory, no certificates.
  std::string conf = read_file(pkg().root + "/usr/share/doc/nbdtunnel/examples/dest.conf");
  conf = std::regex_replace(conf, std::regex("0\\.0\\.0\\.0:49152"), "127.0.0.1:0");
  conf = std::regex_replace(conf, std::regex("/run/nbdtunnel/"), dir.file(""));
  conf = std::regex_replace(conf, std::regex("127\\.0\\.0\\.1:9649"), "127.0.0.1:0");
  conf = std::regex_replace(conf, std::regex("tls-dir = .*\n"), "no-tls = true\n");
  write_file(dir.file("dest.conf"), conf);
  Process dest("dest", {pkg().binary(), "dest", "--config", dir.file("dest.conf")},
               dir.file("dest.log"));
  EXPECT_TRUE(dest.wait_for_log(R"(listening on 127\.0\.0\.1:\d+)", Seconds(10))) << dest.log();
  EXPECT_TRUE(dest.wait_for_log(R"(metrics on http://127\.0\.0\.1:\d+/metrics)", Seconds(10)));
  EXPECT_TRUE(
      dest.wait_for_log("target 'nbd' is " + regex_escape(dir.file("dst-nbd.sock")), Seconds(10)));
  dest.signal(SIGTERM);
  EXPECT_EQ(dest.wait_exit(Seconds(10)), 0);
}

TEST_F(Package, MirrorsADiskThroughTheUnpackedDestAndSource) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  constexpr std::uint64_t kSize = 32 << 20;
  constexpr Seconds kJobTimeout{60};
  TempDir dir;
  ::setenv("NBDTUNNEL_BINARY", pkg().binary().c_str(), 1);
  auto dst = Qemu::storage_daemon(dir, "qsd-dst", {});
  dst.qmp().execute("nbd-server-start",
                    {{"addr", {{"type", "unix"}, {"data", {{"path", dir.file("dst-nbd.sock")}}}}}});
  make_zero_image(dir.file("dst.raw"), kSize);
  add_raw_file_node(dst.qmp(), "disk0", dir.file("dst.raw"));
  dst.qmp().execute("block-export-add", {{"type", "nbd"},
                                         {"id", "exp0"},
                                         {"node-name", "disk0"},
                                         {"name", "disk0"},
                                         {"writable", true}});
  auto dest = start_dest(dir, {"nbd=" + dir.file("dst-nbd.sock")});
  const std::string tunnel_sock = dir.file("tunnel.sock");
  auto source = start_source(dir, dest.port, {tunnel_sock + "=nbd"});
  ::unsetenv("NBDTUNNEL_BINARY");
  EXPECT_NE(dest.process.command_line().find(pkg().root), std::string::npos);

  auto src = Qemu::storage_daemon(dir, "qsd-src", {});
  make_random_image(dir.file("src.raw"), kSize, 7);
  add_raw_file_node(src.qmp(), "disk0", dir.file("src.raw"));
  add_nbd_unix_node(src.qmp(), "tgt0", tunnel_sock, "disk0");
  start_full_mirror(src.qmp(), "m0", "disk0", "tgt0");
  wait_job_ready(src.qmp(), "m0", kJobTimeout);
  auto done = cancel_ready_job(src.qmp(), "m0", kJobTimeout);
  EXPECT_FALSE(done.contains("error")) << done.dump();
  EXPECT_EQ(src.quit(), 0);
  EXPECT_EQ(dst.quit(), 0);
  EXPECT_TRUE(files_identical(dir.file("src.raw"), dir.file("dst.raw")));
}

}  // namespace
}  // namespace nbdtunnel::testing
