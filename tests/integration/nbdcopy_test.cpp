// nbdcopy, a real NBD client with several connections, copies a disk through the tunnel.
#include <gtest/gtest.h>
#include <signal.h>

#include "nbd/export_digest.hpp"
#include "nbd/nbd_client.hpp"
#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/nbd_servers.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/temp_dir.hpp"
#include "tests/integration/harness/tunnel.hpp"
#include "tests/integration/harness/within.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr std::uint64_t kDiskSize = 256 << 20;

TEST(TunnelNbdcopy, CopiesADiskToTheDestinationExport) {
  NBDTUNNEL_REQUIRE_TOOLS("nbdcopy", "qemu-nbd");
  TempDir dir;
  const std::string src_image = dir.file("src.raw");
  const std::string dst_image = dir.file("dst.raw");
  make_random_image(src_image, kDiskSize, 11);
  make_zero_image(dst_image, kDiskSize);

  // Source export read directly; destination export reached only through the tunnel.
  auto src_server = start_qemu_nbd(dir, dir.file("src-nbd.sock"), src_image, "src", "qemu-nbd-src");
  auto dst_server = start_qemu_nbd(dir, dir.file("dst-nbd.sock"), dst_image, "dst", "qemu-nbd-dst");
  auto dest = start_dest(dir, {"nbd=" + dir.file("dst-nbd.sock")});
  const std::string tunnel_sock = dir.file("tunnel.sock");
  auto source = start_source(dir, dest.port, {tunnel_sock + "=nbd"});

  const auto start = std::chrono::steady_clock::now();
  auto code = run_command("nbdcopy",
                          {"nbdcopy", "--connections=4", "--requests=16",
                           "nbd+unix:///src?socket=" + dir.file("src-nbd.sock"),
                           "nbd+unix:///dst?socket=" + tunnel_sock},
                          dir.file("nbdcopy.log"), Seconds(60));
  const Seconds took = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(code, 0) << "nbdcopy through the tunnel failed";
  std::cout << "nbdcopy: " << (kDiskSize >> 20) << " MiB in " << took.count() << " s ("
            << static_cast<double>(kDiskSize >> 20) / took.count() << " MiB/s)\n";

  // Read back through the tunnel too, then compare the files themselves.
  const std::uint64_t through_tunnel = within(Seconds(30), "digest through the tunnel", [&] {
    return nbd::digest_export(nbd::NbdClient::connect_uri("nbd+unix:///dst?socket=" + tunnel_sock));
  });
  EXPECT_EQ(through_tunnel, nbd::digest_file(src_image));
  dst_server.signal(SIGTERM);
  EXPECT_TRUE(dst_server.wait_exit(Seconds(10)));
  EXPECT_TRUE(files_identical(src_image, dst_image));
}

}  // namespace
}  // namespace nbdtunnel::testing
