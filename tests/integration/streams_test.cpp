// Many streams at once on one channel, data both ways.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

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

constexpr int kClients = 8;
constexpr std::size_t kRegion = 16 << 20;  // per client
constexpr std::size_t kRequest = 1 << 20;

// One client's work: write its region in 1 MiB requests, flush, read it all back, compare.
std::string exercise_region(const std::string& socket, int index) {
  try {
    auto client = nbd::NbdClient::connect_unix(socket, "");
    const auto data = random_bytes(kRegion, 100 + index);
    const std::uint64_t base = static_cast<std::uint64_t>(index) * kRegion;
    for (std::size_t off = 0; off < kRegion; off += kRequest) {
      client.pwrite(std::span(data).subspan(off, kRequest), base + off);
    }
    client.flush();
    std::vector<std::byte> back(kRegion);
    for (std::size_t off = 0; off < kRegion; off += kRequest) {
      client.pread(std::span(back).subspan(off, kRequest), base + off);
    }
    client.shutdown();
    if (back != data) return "client " + std::to_string(index) + ": data read back differs";
    return {};
  } catch (const std::exception& e) {
    return "client " + std::to_string(index) + ": " + e.what();
  }
}

TEST(TunnelStreams, EightConcurrentClientsWriteAndReadBack) {
  NBDTUNNEL_REQUIRE_TOOLS("nbdkit");
  TempDir dir;
  const std::string target = dir.file("target.sock");
  const std::string local = dir.file("local.sock");
  auto server = start_nbdkit_memory(dir, target, kClients * kRegion);
  auto dest = start_dest(dir, {"nbd=" + target});
  auto source = start_source(dir, dest.port, {local + "=nbd"});

  auto errors = within(Seconds(60), "8 concurrent NBD clients", [&] {
    std::vector<std::string> result(kClients);
    std::vector<std::thread> threads;
    for (int i = 0; i < kClients; ++i) {
      threads.emplace_back([&, i] { result[i] = exercise_region(local, i); });
    }
    for (auto& t : threads) t.join();
    return result;
  });
  for (const auto& e : errors) EXPECT_EQ(e, "");

  // A last stream reads the whole export, interleaving every client's data, and checks it.
  {
    nbd::Digest64 expected;
    for (int i = 0; i < kClients; ++i) expected.update(random_bytes(kRegion, 100 + i));
    const std::uint64_t got = within(Seconds(30), "whole-export digest", [&] {
      return nbd::digest_export(nbd::NbdClient::connect_unix(local, ""));
    });
    EXPECT_EQ(got, expected.finish());
  }
  EXPECT_EQ(source.count_in_log("channel connected to"), 1U);
  EXPECT_EQ(source.count_in_log("refused|channel lost"), 0U);
}

}  // namespace
}  // namespace nbdtunnel::testing
