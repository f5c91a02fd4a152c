// `nbdtunnel migrate` over mutual TLS between real QEMUs, with real certificates: the copy is
// identical and no byte of the disk crosses the wire in clear; and each way a TLS setup can be
// wrong is refused on both sides with a message naming the cause.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "test_pki.hpp"
#include "tests/integration/harness/files.hpp"
#include "tests/migrate/migrate_harness.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::uint64_t kSize = 32 * kMiB;
// What the disk is made of: found in a recording of a plain channel, never in a TLS one.
const std::string kMarker = "nbdtunnel-plaintext-marker-0123456789abcdef";

void make_marker_image(const std::string& path, std::uint64_t size) {
  std::ofstream out(path, std::ios::binary);
  std::string block;
  while (block.size() < (1 << 16)) block += kMarker;
  block.resize(1 << 16);
  for (std::uint64_t done = 0; done < size; done += block.size()) out << block;
}

// A TCP relay on 127.0.0.1 in front of the dest that keeps every byte the source sends.
class RecordingProxy {
 public:
  explicit RecordingProxy(int target_port) : target_port_(target_port) {
    listener_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listener_.get(), 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~RecordingProxy() {
    stop_ = true;
    ::shutdown(listener_.get(), SHUT_RDWR);
    acceptor_.join();
    {
      std::lock_guard lock(mu_);
      for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : relays_) t.join();
  }
  int port() const { return port_; }
  bool recorded_contains(const std::string& needle) {
    std::lock_guard lock(mu_);
    return std::search(recording_.begin(), recording_.end(),
                       std::boyer_moore_horspool_searcher(needle.begin(), needle.end())) !=
           recording_.end();
  }
  std::size_t recorded() {
    std::lock_guard lock(mu_);
    return recording_.size();
  }

 private:
  void accept_loop() {
    while (!stop_) {
      int client = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) return;
      int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<std::uint16_t>(target_port_));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(client);
        ::close(server);
        continue;
      }
      std::lock_guard lock(mu_);
      open_.push_back(client);
      open_.push_back(server);
      relays_.emplace_back([this, client, server] { pump(client, server, true); });
      relays_.emplace_back([this, client, server] { pump(server, client, false); });
    }
  }
  void pump(int from, int to, bool record) {
    std::vector<char> buf(1 << 16);
    for (;;) {
      const ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
      if (n <= 0) break;
      if (record) {
        std::lock_guard lock(mu_);
        recording_.insert(recording_.end(), buf.begin(), buf.begin() + n);
      }
      if (::send(to, buf.data(), static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
    }
    ::shutdown(to, SHUT_WR);
  }

  int target_port_;
  int port_ = 0;
  tunnel::unique_fd listener_;
  std::thread acceptor_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<int> open_;
  std::vector<std::thread> relays_;
  std::vector<char> recording_;
};

// Two storage daemons with disk0 of marker bytes (source) and zeros (destination), a PKI,
// the server's and the client's credential directories.
struct TlsHosts {
  TempDir dir;
  TestPki pki;
  std::string server_dir, client_dir;
  std::optional<QemuHost> src, dst;

  TlsHosts() : server_dir(dir.file("pki-server")), client_dir(dir.file("pki-client")) {
    pki.write_server_dir(server_dir);
    CertOptions client;
    client.subject = "C=GB,O=nbdtunnel test,CN=source.example";
    pki.write_client_dir(client_dir, client);
    make_marker_image(dir.file("src0.raw"), kSize);
    make_zero_image(dir.file("dst0.raw"), kSize);
    src.emplace(start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw"))));
    dst.emplace(start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw"))));
  }
  TunnelDest dest(const std::vector<std::string>& args) {
    return start_migration_dest(dir, *dst, kDestHostId, "dest", args);
  }
  MigrateResult migrate(int port, const std::vector<std::string>& args) {
    std::vector<std::string> extra{"--json"};
    extra.insert(extra.end(), args.begin(), args.end());
    return run_migrate(dir, "migrate", migrate_args(*src, port, {"disk0"}, extra), Seconds(60));
  }
};

std::string first_error(const MigrateResult& r) {
  auto errors = events_named(r.events, "error");
  return errors.empty() ? r.stderr_text : errors.front().value("message", "");
}

// Waits (bounded) until the dest's log holds text.
bool dest_logged(TunnelDest& d, const std::string& text) {
  for (int i = 0; i < 100; ++i) {
    if (d.process.log().find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(MigrateTls, MigrationOverMutualTlsIsIdenticalAndNothingCrossesInClear) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  auto dest = h.dest({"--tls-dir", h.server_dir});
  RecordingProxy proxy(dest.port);
  auto r = h.migrate(proxy.port(), {"--tls-dir", h.client_dir});
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  EXPECT_TRUE(files_identical(h.dir.file("src0.raw"), h.dir.file("dst0.raw")));
  EXPECT_GT(proxy.recorded(), kSize);  // the disk did go through the proxy
  EXPECT_FALSE(proxy.recorded_contains(kMarker));
  EXPECT_TRUE(dest_logged(dest, "TLS client certificate 'C=GB,O=nbdtunnel test,CN=source.example'"))
      << dest.process.log();
  EXPECT_TRUE(has_no_export(h.dst->qmp()));
}

// The control for the test above: the same recording of a plain channel does hold the marker.
TEST(MigrateTls, PlainChannelRecordingShowsTheDisk) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  auto dest = h.dest({});
  RecordingProxy proxy(dest.port);
  auto r = h.migrate(proxy.port(), {});
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  EXPECT_TRUE(proxy.recorded_contains(kMarker));
}

TEST(MigrateTls, PlainSourceToTlsDestIsToldTlsIsRequired) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  auto dest = h.dest({"--tls-dir", h.server_dir});
  auto r = h.migrate(dest.port, {"--no-tls"});
  EXPECT_EQ(r.exit_code, 2) << describe(r.events);
  EXPECT_NE(first_error(r).find("requires TLS"), std::string::npos) << first_error(r);
  EXPECT_TRUE(dest_logged(dest, "plain (non-TLS)")) << dest.process.log();
}

TEST(MigrateTls, TlsSourceToPlainDestSaysSo) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  auto dest = h.dest({});
  auto r = h.migrate(dest.port, {"--tls-dir", h.client_dir});
  EXPECT_EQ(r.exit_code, 2) << describe(r.events);
  EXPECT_NE(first_error(r).find("TLS"), std::string::npos) << first_error(r);
  EXPECT_TRUE(dest_logged(dest, "speaks TLS")) << dest.process.log();
}

TEST(MigrateTls, ServerCertificateFromAnotherCaIsRefused) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  TestPki other("O=elsewhere,CN=another CA");
  const std::string rogue = h.dir.file("pki-rogue-server");
  other.write_server_dir(rogue);
  auto dest = h.dest({"--tls-dir", rogue});
  auto r = h.migrate(dest.port, {"--tls-dir", h.client_dir});
  EXPECT_EQ(r.exit_code, 2) << describe(r.events);
  const std::string e = first_error(r);
  EXPECT_TRUE(e.find("CA") != std::string::npos || e.find("issuer") != std::string::npos) << e;
  EXPECT_TRUE(dest_logged(dest, "TLS handshake failed")) << dest.process.log();
}

TEST(MigrateTls, ClientDnNotAllowedIsRefusedOnBothSides) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  auto dest = h.dest({"--tls-dir", h.server_dir, "--tls-allowed-dn", "C=GB,O=operators,CN=*"});
  auto r = h.migrate(dest.port, {"--tls-dir", h.client_dir});
  EXPECT_NE(r.exit_code, 0) << describe(r.events);
  EXPECT_NE(first_error(r).find("refused"), std::string::npos) << first_error(r);
  EXPECT_TRUE(dest_logged(dest, "--tls-allowed-dn")) << dest.process.log();
}

TEST(MigrateTls, AllowedDnPatternLetsTheClientIn) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  auto dest = h.dest({"--tls-dir", h.server_dir, "--tls-allowed-dn", "C=GB,O=nbdtunnel test,CN=*"});
  auto r = h.migrate(dest.port, {"--tls-dir", h.client_dir});
  EXPECT_EQ(r.exit_code, 0) << describe(r.events) << r.stderr_text;
  EXPECT_TRUE(files_identical(h.dir.file("src0.raw"), h.dir.file("dst0.raw")));
}

TEST(MigrateTls, HostnameMismatchNamesTheNameChecked) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  auto dest = h.dest({"--tls-dir", h.server_dir});
  auto r = h.migrate(dest.port, {"--tls-dir", h.client_dir, "--tls-hostname", "dest.example"});
  EXPECT_EQ(r.exit_code, 2) << describe(r.events);
  EXPECT_NE(first_error(r).find("dest.example"), std::string::npos) << first_error(r);
}

TEST(MigrateTls, ExpiredClientCertificateIsRefused) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  TlsHosts h;
  CertOptions expired;
  expired.not_before = -std::chrono::hours(48);
  expired.not_after = -std::chrono::hours(24);
  const std::string old = h.dir.file("pki-expired");
  h.pki.write_client_dir(old, expired);
  auto dest = h.dest({"--tls-dir", h.server_dir});
  auto r = h.migrate(dest.port, {"--tls-dir", old});
  EXPECT_NE(r.exit_code, 0) << describe(r.events);
  EXPECT_TRUE(dest_logged(dest, "expired")) << dest.process.log();
}

TEST(MigrateTls, NonLoopbackDestWithoutTlsIsRefusedUnlessInsecure) {
  TempDir dir;
  Process refused("dest-refused",
                  {nbdtunnel_binary(), "dest", "--listen", "0.0.0.0:0", "--target", "x=/nowhere"},
                  dir.file("dest-refused.log"));
  auto code = refused.wait_exit(Seconds(10));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 2);
  EXPECT_NE(refused.log().find("--insecure"), std::string::npos) << refused.log();
  EXPECT_NE(refused.log().find("--tls-dir"), std::string::npos) << refused.log();
}

}  // namespace
}  // namespace nbdtunnel::testing
