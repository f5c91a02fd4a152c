#include "nbd/export_digest.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/nbd_servers.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::nbd {
namespace {

using testing::TempDir;

TEST(Digest64, DoesNotDependOnChunking) {
  auto data = testing::random_bytes(100'003, 1);
  const std::uint64_t whole = digest_bytes(data);
  for (std::size_t step : {1UL, 3UL, 7UL, 8UL, 13UL, 4096UL, 65'537UL}) {
    Digest64 d;
    for (std::size_t off = 0; off < data.size(); off += step) {
      d.update(std::span(data).subspan(off, std::min(step, data.size() - off)));
    }
    EXPECT_EQ(d.finish(), whole) << "chunks of " << step;
  }
}

TEST(Digest64, SeesOneFlippedBitAndTrailingZeroes) {
  auto data = testing::random_bytes(65'536, 2);
  const std::uint64_t before = digest_bytes(data);
  data[40'000] ^= std::byte{0x10};
  EXPECT_NE(digest_bytes(data), before);

  std::vector<std::byte> zeros(4096), more_zeros(4097);
  EXPECT_NE(digest_bytes(zeros), digest_bytes(more_zeros));
  EXPECT_NE(digest_bytes({}), digest_bytes(zeros));
}

TEST(ExportDigest, EqualsTheDigestOfTheExportedFile) {
  NBDTUNNEL_REQUIRE_TOOLS("qemu-nbd");
  TempDir dir;
  const std::string image = dir.file("disk.raw");
  // Not a multiple of the 4 MiB read chunk, so the last read is short.
  testing::make_random_image(image, (9 << 20) + 512, 3);
  auto server = testing::start_qemu_nbd(dir, dir.file("nbd.sock"), image, "disk");

  auto client = NbdClient::connect_unix(dir.file("nbd.sock"), "disk");
  const std::uint64_t from_file = digest_file(image);
  EXPECT_EQ(digest_export(client), from_file);

  client.pwrite(testing::random_bytes(512, 4), 1 << 20);
  EXPECT_NE(digest_export(client), from_file);
}

TEST(ExportDigest, MissingFileThrowsNamingIt) {
  EXPECT_THROW(
      {
        try {
          digest_file("/nonexistent/disk.raw");
        } catch (const std::exception& e) {
          EXPECT_NE(std::string(e.what()).find("/nonexistent/disk.raw"), std::string::npos);
          throw;
        }
      },
      std::system_error);
}

}  // namespace
}  // namespace nbdtunnel::nbd
