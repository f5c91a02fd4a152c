// Storage migration for real: QEMU's blockdev-mirror writes into a destination QEMU's NBD
// server through the tunnel. Destination file nodes keep flushes on (no cache.no-flush), as a
// real migration would.
#include <gtest/gtest.h>

#include <iostream>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/qemu.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/temp_dir.hpp"
#include "tests/integration/harness/tunnel.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr Seconds kJobTimeout{60};

// A destination qemu-storage-daemon exporting zeroed raw images disk0..diskN-1, writable, from
// an NBD server on a UNIX socket.
Qemu start_destination(const TempDir& dir, int disks, std::uint64_t size) {
  auto qsd = Qemu::storage_daemon(dir, "qsd-dst", {});
  // nbd-server-start takes the legacy SocketAddress form: {type, data: {path}}.
  qsd.qmp().execute("nbd-server-start",
                    {{"addr", {{"type", "unix"}, {"data", {{"path", dir.file("dst-nbd.sock")}}}}}});
  for (int i = 0; i < disks; ++i) {
    const std::string node = "disk" + std::to_string(i);
    make_zero_image(dir.file("dst" + std::to_string(i) + ".raw"), size);
    add_raw_file_node(qsd.qmp(), node, dir.file("dst" + std::to_string(i) + ".raw"));
    qsd.qmp().execute("block-export-add", {{"type", "nbd"},
                                           {"id", "exp" + std::to_string(i)},
                                           {"node-name", node},
                                           {"name", node},
                                           {"writable", true}});
  }
  return qsd;
}

TEST(TunnelMirror, TwoDisksMirrorConcurrentlyThroughOneChannel) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon");
  constexpr std::uint64_t kSize = 256 << 20;
  TempDir dir;
  auto dst = start_destination(dir, 2, kSize);
  auto dest = start_dest(dir, {"nbd=" + dir.file("dst-nbd.sock")});
  const std::string tunnel_sock = dir.file("tunnel.sock");
  auto source = start_source(dir, dest.port, {tunnel_sock + "=nbd"});

  auto src = Qemu::storage_daemon(dir, "qsd-src", {});
  for (int i = 0; i < 2; ++i) {
    const std::string n = std::to_string(i);
    make_random_image(dir.file("src" + n + ".raw"), kSize, 20 + i);
    add_raw_file_node(src.qmp(), "disk" + n, dir.file("src" + n + ".raw"));
    add_nbd_unix_node(src.qmp(), "tgt" + n, tunnel_sock, "disk" + n);
  }

  const auto start = std::chrono::steady_clock::now();
  start_full_mirror(src.qmp(), "m0", "disk0", "tgt0");
  start_full_mirror(src.qmp(), "m1", "disk1", "tgt1");
  // Both jobs run at once; each waits (events are queued apart, so order does not matter).
  wait_job_ready(src.qmp(), "m0", kJobTimeout);
  wait_job_ready(src.qmp(), "m1", kJobTimeout);
  const Seconds took = std::chrono::steady_clock::now() - start;
  std::cout << "mirror: 2 x " << (kSize >> 20) << " MiB ready in " << took.count() << " s ("
            << 2.0 * static_cast<double>(kSize >> 20) / took.count() << " MiB/s)\n";
  for (const char* job : {"m0", "m1"}) {
    auto done = cancel_ready_job(src.qmp(), job, kJobTimeout);
    EXPECT_FALSE(done.contains("error")) << job << ": " << done.dump();
    EXPECT_EQ(done.value("offset", 0ULL), kSize) << job << ": " << done.dump();
  }

  EXPECT_EQ(src.quit(), 0);
  EXPECT_EQ(dst.quit(), 0);
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  EXPECT_TRUE(files_identical(dir.file("src1.raw"), dir.file("dst1.raw")));
  EXPECT_EQ(source.count_in_log("channel connected to"), 1U);
}

TEST(TunnelMirror, GuestWritesDuringTheMirrorReachTheDestination) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-storage-daemon", "qemu-system-x86_64");
  constexpr std::uint64_t kSize = 128 << 20;
  struct Write {
    std::uint64_t offset;
    std::size_t len;
  };
  // The first, the middle and the last MiB, and an unaligned write across a 64 KiB boundary.
  const std::vector<Write> writes = {
      {0, 64 << 10}, {kSize / 2, 1 << 20}, {kSize - (1 << 20), 1 << 20}, {(5 << 20) - 512, 4096}};

  TempDir dir;
  auto dst = start_destination(dir, 1, kSize);
  auto dest = start_dest(dir, {"nbd=" + dir.file("dst-nbd.sock")});
  const std::string tunnel_sock = dir.file("tunnel.sock");
  auto source = start_source(dir, dest.port, {tunnel_sock + "=nbd"});

  make_random_image(dir.file("src0.raw"), kSize, 30);
  auto vm = Qemu::system(
      dir, "qemu-src",
      {"-blockdev", "driver=file,node-name=disk0-file,filename=" + dir.file("src0.raw"),
       "-blockdev", "driver=raw,node-name=disk0,file=disk0-file"});
  add_nbd_unix_node(vm.qmp(), "tgt0", tunnel_sock, "disk0");
  start_full_mirror(vm.qmp(), "m0", "disk0", "tgt0");
  for (const auto& w : writes) {
    const std::string off = std::to_string(w.offset), len = std::to_string(w.len);
    auto reply = vm.qmp().hmp("qemu-io disk0 \"write -P 0x5a " + off + " " + len + "\"");
    // qemu-io reports on QEMU's stdout, not in the reply.
    EXPECT_TRUE(vm.process().wait_for_log("wrote " + len + "/" + len + " bytes at offset " + off,
                                          Seconds(5)))
        << "qemu-io write at " << off << " not confirmed; reply: " << reply;
  }
  auto jobs = vm.qmp().execute("query-block-jobs", json::object());
  std::cout << "after the writes: " << jobs.dump() << "\n";

  wait_job_ready(vm.qmp(), "m0", kJobTimeout);
  auto done = cancel_ready_job(vm.qmp(), "m0", kJobTimeout);
  EXPECT_FALSE(done.contains("error")) << done.dump();

  EXPECT_EQ(vm.quit(), 0);
  EXPECT_EQ(dst.quit(), 0);
  EXPECT_TRUE(files_identical(dir.file("src0.raw"), dir.file("dst0.raw")));
  for (const auto& w : writes) {
    EXPECT_TRUE(file_has_pattern(dir.file("dst0.raw"), w.offset, w.len, std::byte{0x5a}));
  }
}

}  // namespace
}  // namespace nbdtunnel::testing
