// A destination daemon under attack while a real migration runs: a second channel that knows
// (or guesses) the migration's id cannot open its streams, FINISH it, or learn anything about it,
// and the migration completes byte for byte.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "engine/migration_protocol.hpp"
#include "test_pki.hpp"
#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/sockets.hpp"
#include "tests/migrate/migrate_harness.hpp"
#include "tests/tunnel/raw_peer.hpp"

namespace nbdtunnel::testing {
namespace {

using tunnel::ErrorCode;
using tunnel::PacketStatus;
using tunnel::PacketType;
using tunnel::Proc;
using tunnel::testing::Bytes;
using tunnel::testing::hdr;
using tunnel::testing::RawPeer;

constexpr std::uint64_t kMiB = 1 << 20;

// A TCP connection to the dest on 127.0.0.1 that speaks packets written by hand.
RawPeer connect_raw(int port) {
  tunnel::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return RawPeer(std::move(fd));
}

// A TCP socket bound to the loopback address `from` (attackers come from their own addresses,
// as they would in a real network), connecting to the dest; blocking or not.
tunnel::unique_fd connect_from(const char* from, int port, bool blocking) {
  tunnel::unique_fd fd(
      ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK), 0));
  sockaddr_in local{};
  local.sin_family = AF_INET;
  ::inet_pton(AF_INET, from, &local.sin_addr);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) return {};
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  if (rc != 0 && (blocking || errno != EINPROGRESS)) return {};
  return fd;
}

std::size_t open_fds(pid_t pid) {
  std::size_t n = 0;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

std::size_t rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  }
  return 0;
}

// HELLO as any client would send it.
::testing::AssertionResult say_hello(RawPeer& peer) {
  tunnel::Hello h;
  h.host_id = "hostile-host";
  h.hostname = "hostile";
  h.window = tunnel::kMinWindow;
  h.max_payload = tunnel::kMinWindow;
  Bytes body;
  tunnel::encode_hello(body, h);
  peer.send(hdr(static_cast<std::uint32_t>(Proc::hello), PacketType::call, 1), body);
  auto reply = peer.read_packet(std::chrono::seconds(5));
  if (!reply || reply->h.status != 0) return ::testing::AssertionFailure() << "HELLO refused";
  return ::testing::AssertionSuccess();
}

// Sends a CALL and returns the message of its ERROR reply ("" if it was not refused).
std::string refused(RawPeer& peer, std::uint32_t proc, std::uint32_t serial, const Bytes& body) {
  peer.send(hdr(proc, PacketType::call, serial), body);
  for (;;) {
    auto p = peer.read_packet(std::chrono::seconds(10));
    if (!p) return "<no reply>";
    if (p->h.type != static_cast<std::uint32_t>(PacketType::reply) || p->h.serial != serial) {
      continue;  // keepalives
    }
    if (p->h.status != static_cast<std::uint32_t>(PacketStatus::error)) return "";
    auto e = tunnel::decode_remote_error(p->body);
    return e ? e->message.value_or("<no message>") : "<undecodable error>";
  }
}

TEST(MigrateHostile, SecondChannelCannotTouchAMigrationItDidNotPrepare) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  constexpr std::uint64_t kSize = 64 * kMiB;
  const std::string id = "victim-7f3a";
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 701);
  make_zero_image(dir.file("dst0.raw"), kSize);
  auto src = start_storage_host(dir, "qsd-src", raw_disk_args("disk0", dir.file("src0.raw")));
  auto dst = start_storage_host(dir, "qsd-dst", raw_disk_args("disk0", dir.file("dst0.raw")));
  auto dest = start_migration_dest(dir, dst);
  MigrateRun run(
      dir, "migrate",
      migrate_args(src, dest.port, {"disk0"}, {"--json", "--bandwidth", "16", "--id", id}));
  auto copying = run.wait_event(
      [](const json& ev) {
        return ev.value("event", "") == "progress" && ev.value("done", 0ULL) > 0;
      },
      Seconds(30));
  ASSERT_TRUE(copying) << describe(run.events());

  RawPeer hostile = connect_raw(dest.port);
  ASSERT_TRUE(say_hello(hostile));
  // Its streams: refused as an unknown target, and the refusal names no other target.
  Bytes open;
  tunnel::encode_open_tunnel(open, tunnel::OpenTunnel{"migration/" + id, 0});
  const std::string open_error =
      refused(hostile, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel), 3, open);
  EXPECT_NE(open_error.find("unknown target"), std::string::npos) << open_error;
  // FINISH (abort) of a migration this channel did not prepare: refused, the migration goes on.
  Bytes finish;
  engine::encode_finish(finish, engine::Finish{id, engine::kFinishAbort});
  const std::string finish_error =
      refused(hostile, static_cast<std::uint32_t>(engine::MigrationProc::finish), 5, finish);
  EXPECT_NE(finish_error.find("was prepared on this channel"), std::string::npos) << finish_error;
  // PREPARE while busy: refused without the id of the migration being served.
  Bytes prepare;
  engine::encode_prepare(prepare, engine::Prepare{"intruder", {{"disk0", kSize}}, 0});
  const std::string prepare_error =
      refused(hostile, static_cast<std::uint32_t>(engine::MigrationProc::prepare), 7, prepare);
  EXPECT_NE(prepare_error.find("already serving another migration"), std::string::npos)
      << prepare_error;
  EXPECT_EQ(prepare_error.find(id), std::string::npos) << prepare_error;

  auto code = run.wait_exit(Seconds(60));
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, 0) << describe(run.events()) << run.stderr_text();
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(has_no_export(dst.qmp()));
}

// The libvirt role (`dest --libvirt`): a run directory belongs to the channel that prepared it.
// Another channel can neither open its sockets nor finish it nor prepare its id again; no name
// under migration/<id>/ other than memory and nbd resolves; bad images are refused by path; and
// the directory goes when its channel does.
TEST(MigrateHostile, LibvirtRunDirectoriesBelongToTheChannelThatPreparedThem) {
  TempDir dir;
  const std::string run_dir = dir.file("run");
  std::filesystem::create_directory(run_dir);
  const std::string image = dir.file("vm.raw");
  make_zero_image(image, 16 * kMiB);
  RawSocket libvirt = RawSocket::listen_unix(dir.file("libvirt.sock"));
  auto dest = start_dest(dir, {},
                         {"--libvirt", "--insecure", "--run-dir", run_dir, "--libvirt-socket",
                          dir.file("libvirt.sock"), "--host-id", kDestHostId});
  const auto open_proc = static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel);
  const auto prepare_proc = engine::procedure_number(engine::MigrationProc::libvirt_prepare);
  const auto finish_proc = engine::procedure_number(engine::MigrationProc::libvirt_finish);
  auto open_body = [](const std::string& target) {
    Bytes b;
    tunnel::encode_open_tunnel(b, tunnel::OpenTunnel{target, 0});
    return b;
  };
  Bytes prepare;
  engine::encode_prepare(prepare, engine::Prepare{"lv-1", {{image, 16 * kMiB}}, 0});
  Bytes finish;
  engine::encode_finish(finish, engine::Finish{"lv-1", 0});
  const std::string dir_of_migration = run_dir + "/lv-1";
  {
    RawPeer owner = connect_raw(dest.port);
    ASSERT_TRUE(say_hello(owner));
    EXPECT_EQ(refused(owner, prepare_proc, 3, prepare), "");
    EXPECT_TRUE(std::filesystem::is_directory(dir_of_migration));

    RawPeer hostile = connect_raw(dest.port);
    ASSERT_TRUE(say_hello(hostile));
    std::uint32_t hostile_serial = 1;
    for (const char* name : {"memory", "nbd"}) {
      EXPECT_NE(refused(hostile, open_proc, hostile_serial += 2,
                        open_body("migration/lv-1/" + std::string(name)))
                    .find("unknown target"),
                std::string::npos)
          << name;
    }
    EXPECT_NE(
        refused(hostile, finish_proc, hostile_serial += 2, finish).find("no migration 'lv-1'"),
        std::string::npos);
    EXPECT_NE(refused(hostile, prepare_proc, hostile_serial += 2, prepare), "")
        << "the same id prepared twice";
    EXPECT_TRUE(std::filesystem::is_directory(dir_of_migration));

    // Even the owner reaches nothing but the two sockets.
    std::uint32_t serial = 5;
    for (const char* target :
         {"migration/lv-1/../../etc/passwd", "migration/lv-1/", "migration/lv-1/libvirt",
          "migration/lv-1/nbd/x", "migration/lv-1", "migration//nbd"}) {
      EXPECT_NE(refused(owner, open_proc, serial += 2, open_body(target)).find("unknown target"),
                std::string::npos)
          << target;
    }
    // The libvirt socket is reachable (this daemon's role), and images are checked by path.
    EXPECT_EQ(refused(owner, open_proc, serial += 2, open_body("libvirt")), "");
    Bytes bad;
    engine::encode_prepare(
        bad, engine::Prepare{"lv-2", {{image, 32 * kMiB}, {dir.file("missing.raw"), kMiB}}, 0});
    const std::string why = refused(owner, prepare_proc, serial += 2, bad);
    EXPECT_NE(why.find(image + " has 16777216 bytes"), std::string::npos) << why;
    EXPECT_NE(why.find(dir.file("missing.raw") + " does not exist"), std::string::npos) << why;
    EXPECT_FALSE(std::filesystem::exists(run_dir + "/lv-2"));
  }
  // The owner's channel is gone: so is its run directory.
  for (int i = 0; i < 100 && std::filesystem::exists(dir_of_migration); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_FALSE(std::filesystem::exists(dir_of_migration)) << dest.process.log();
}

// The flood of point 9: idle connections, garbage senders and a channel flooding OPEN_TUNNEL, all
// at once while a real two-disk migration runs. The migration completes identical, and once the
// attackers are gone the daemon holds no more descriptors or memory than before.
// A TLS client without a certificate, from `from`, through its handshake to the first read,
// which the dest answers with an alert. True if the dest refused it.
bool tls_without_certificate(const char* from, int port) {
  tunnel::unique_fd fd = connect_from(from, port, true);
  if (!fd) return true;  // refused at accept
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd.get());
  timeval tv{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  bool refused = SSL_connect(ssl) != 1;
  if (!refused) {
    char byte;
    refused = SSL_read(ssl, &byte, 1) <= 0;
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return refused;
}

class MigrateFlood : public ::testing::TestWithParam<bool> {};

INSTANTIATE_TEST_SUITE_P(Channels, MigrateFlood, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "tls" : "plain"; });

TEST_P(MigrateFlood, DuringAMigrationLeavesItIntactAndCostsNothingAfter) {
  const bool tls = GetParam();
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  constexpr std::uint64_t kSize = 48 * kMiB;
  TempDir dir;
  make_random_image(dir.file("src0.raw"), kSize, 801);
  make_random_image(dir.file("src1.raw"), kSize, 802);
  make_zero_image(dir.file("dst0.raw"), kSize);
  make_zero_image(dir.file("dst1.raw"), kSize);
  std::vector<std::string> src_args = raw_disk_args("disk0", dir.file("src0.raw"));
  for (auto& a : raw_disk_args("disk1", dir.file("src1.raw"))) src_args.push_back(a);
  std::vector<std::string> dst_args = raw_disk_args("disk0", dir.file("dst0.raw"));
  for (auto& a : raw_disk_args("disk1", dir.file("dst1.raw"))) dst_args.push_back(a);
  auto src = start_storage_host(dir, "qsd-src", src_args);
  auto dst = start_storage_host(dir, "qsd-dst", dst_args);
  TestPki pki;
  std::vector<std::string> dest_args, migrate_tls;
  if (tls) {
    pki.write_server_dir(dir.file("pki-server"));
    pki.write_client_dir(dir.file("pki-client"));
    dest_args = {"--tls-dir", dir.file("pki-server")};
    migrate_tls = {"--tls-dir", dir.file("pki-client")};
  }
  auto dest = start_migration_dest(dir, dst, kDestHostId, "dest", dest_args);
  const pid_t dest_pid = dest.process.pid();
  const std::size_t fds_before = open_fds(dest_pid);
  const std::size_t rss_before = rss_kib(dest_pid);

  std::atomic<bool> stop{false};
  // 1,000 connections that never say anything, from 127.0.0.2.
  std::vector<tunnel::unique_fd> idle;
  for (int i = 0; i < 1000; ++i) idle.push_back(connect_from("127.0.0.2", dest.port, false));
  // 200 connections sending garbage, from 127.0.0.3, over and over.
  std::thread garbage([&] {
    const auto junk = random_bytes(4096, 803);
    for (int round = 0; !stop; ++round) {
      for (int i = 0; i < 200 && !stop; ++i) {
        tunnel::unique_fd fd = connect_from("127.0.0.3", dest.port, true);
        if (fd) ::send(fd.get(), junk.data(), junk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      }
    }
  });
  // Plain: a channel through HELLO that floods OPEN_TUNNEL (unknown targets, the migration's
  // target), reading the refusals. TLS: handshakes without a client certificate. From 127.0.0.4.
  std::atomic<int> refusals{0};
  std::thread opener([&] {
    while (tls && !stop) {
      if (tls_without_certificate("127.0.0.4", dest.port)) ++refusals;
    }
    while (!tls && !stop) {
      tunnel::unique_fd fd = connect_from("127.0.0.4", dest.port, true);
      if (!fd) continue;
      RawPeer peer(std::move(fd));
      if (!say_hello(peer)) continue;
      for (std::uint32_t serial = 3; !stop && serial < 100000; serial += 2) {
        Bytes open;
        const std::string target = serial % 4 == 1 ? "migration/flood" : "nbd";
        tunnel::encode_open_tunnel(open, tunnel::OpenTunnel{target, 0});
        if (!peer.send(hdr(static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                           PacketType::call, serial),
                       open)) {
          break;
        }
        auto reply = peer.read_packet(std::chrono::seconds(5));
        if (!reply) break;
        if (reply->h.status == static_cast<std::uint32_t>(PacketStatus::error)) ++refusals;
      }
    }
  });

  // 96 MiB at 32 MiB/s: the flood has seconds of a running migration to hit, even though its
  // connections wait out SYN retransmits while the accept queue overflows.
  std::vector<std::string> extra = migrate_tls;
  for (const char* a : {"--json", "--bandwidth", "32"}) extra.emplace_back(a);
  auto result = run_migrate(dir, "migrate", migrate_args(src, dest.port, {"disk0", "disk1"}, extra),
                            Seconds(120));
  // On a loaded machine the opener may not have been answered yet: give it until it has been.
  for (int i = 0; i < 300 && refusals == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  stop = true;
  garbage.join();
  opener.join();
  idle.clear();
  EXPECT_EQ(result.exit_code, 0) << describe(result.events) << result.stderr_text;
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(files_identical(dir.file("src1.raw"), dir.file("dst1.raw")));
  EXPECT_GT(refusals, 0);

  // The daemon gives back what the flood took: descriptors (its QMP connection to the
  // destination QEMU, made by the first PREPARE, stays) and memory.
  std::size_t fds_after = open_fds(dest_pid);
  for (int i = 0; i < 300 && fds_after > fds_before + 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    fds_after = open_fds(dest_pid);
  }
  EXPECT_LE(fds_after, fds_before + 1);
  const std::size_t rss_after = rss_kib(dest_pid);
  std::fprintf(stderr,
               "dest: %zu fds and %zu KiB RSS before the flood, %zu fds and %zu KiB after; %d "
               "%s refused\n",
               fds_before, rss_before, fds_after, rss_after, refusals.load(),
               tls ? "certificate-less TLS handshakes" : "OPEN_TUNNEL calls");
#if defined(__SANITIZE_ADDRESS__)
  // ASan keeps freed memory in its quarantine (and so in RSS): only the plain build can say
  // whether memory goes back to the system.
  (void)rss_after;
#else
  EXPECT_LE(rss_after, rss_before + 8 * 1024)
      << "RSS " << rss_before << " KiB before, " << rss_after << " KiB after";
#endif
  EXPECT_TRUE(has_no_export(dst.qmp()));
}

}  // namespace
}  // namespace nbdtunnel::testing
