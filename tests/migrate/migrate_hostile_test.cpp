// A destination daemon under attack while a real migration runs: a second channel that knows
// (or guesses) the migration's id cannot open its streams, FINISH it, or learn anything about it,
// and the migration completes byte for byte.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "engine/migration_protocol.hpp"
#include "tests/integration/harness/files.hpp"
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

}  // namespace
}  // namespace nbdtunnel::testing
