#include "nbd/nbd_client.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "tests/integration/harness/files.hpp"
#include "tests/integration/harness/nbd_servers.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::nbd {
namespace {

using testing::find_program;
using testing::TempDir;

constexpr std::uint64_t kSize = 16 << 20;

class NbdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NBDTUNNEL_REQUIRE_TOOLS("nbdkit");
    server_.emplace(testing::start_nbdkit_memory(dir_, socket_, kSize));
  }

  TempDir dir_;
  std::string socket_ = dir_.file("nbd.sock");
  std::optional<testing::Process> server_;
};

TEST_F(NbdClientTest, WritesReadsZeroesAndFlushes) {
  auto c = NbdClient::connect_unix(socket_, "");
  EXPECT_EQ(c.size(), kSize);

  auto data = testing::random_bytes(1 << 20, 7);
  c.pwrite(data, 3 << 20);
  c.flush();
  std::vector<std::byte> back(data.size());
  c.pread(back, 3 << 20);
  EXPECT_EQ(back, data);

  c.zero(4096, (3 << 20) + 4096);
  c.pread(back, 3 << 20);
  EXPECT_EQ(std::memcmp(back.data(), data.data(), 4096), 0);
  for (std::size_t i = 4096; i < 8192; ++i) ASSERT_EQ(back[i], std::byte{0}) << "byte " << i;
  EXPECT_EQ(std::memcmp(back.data() + 8192, data.data() + 8192, data.size() - 8192), 0);
  c.shutdown();
}

TEST_F(NbdClientTest, ConnectsByUri) {
  auto c = NbdClient::connect_uri("nbd+unix:///?socket=" + socket_);
  EXPECT_EQ(c.size(), kSize);
}

TEST_F(NbdClientTest, MoveKeepsTheConnection) {
  auto a = NbdClient::connect_unix(socket_, "");
  NbdClient b = std::move(a);
  EXPECT_EQ(b.size(), kSize);
  NbdClient c = NbdClient::connect_unix(socket_, "");
  c = std::move(b);
  EXPECT_EQ(c.size(), kSize);
}

TEST_F(NbdClientTest, ReadPastTheEndThrowsWithTheEndpoint) {
  auto c = NbdClient::connect_unix(socket_, "");
  std::vector<std::byte> buf(4096);
  try {
    c.pread(buf, kSize);
    FAIL() << "pread past the end succeeded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(socket_), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("pread"), std::string::npos) << e.what();
  }
}

TEST(NbdClientConnect, MissingSocketThrowsNamingSocketAndExport) {
  TempDir dir;
  const std::string path = dir.file("absent.sock");
  try {
    NbdClient::connect_unix(path, "disk7");
    FAIL() << "connect to a missing socket succeeded";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("disk7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("connect"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace nbdtunnel::nbd
