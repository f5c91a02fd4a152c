// QmpClient, BlockingQmp and block_jobs.hpp against a real qemu-storage-daemon.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "qmp/block_jobs.hpp"
#include "qmp/blocking_qmp.hpp"
#include "storage_daemon.hpp"

namespace nbdtunnel::qmp {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;
using test::StorageDaemon;
using test::TempDir;

constexpr std::uint64_t kImageSize = 64 << 20;
constexpr std::uint64_t kPatternOffset = 1 << 20;
const std::string kPattern(64 * 1024, '\x5a');  // written into the source image before start

// Creates a sparse raw image of `size` bytes.
void make_image(const std::string& path, std::uint64_t size) {
  std::ofstream(path, std::ios::binary).flush();
  fs::resize_file(path, size);
}

// Reads `len` bytes at `offset` of a file.
std::string read_at(const std::string& path, std::uint64_t offset, std::size_t len) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::string out(len, '\0');
  in.read(out.data(), static_cast<std::streamsize>(len));
  return out;
}

void write_at(const std::string& path, std::uint64_t offset, const std::string& data) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::vector<std::string> disk_args(const std::string& image) {
  return {"--blockdev", "driver=file,filename=" + image + ",node-name=f0", "--blockdev",
          "driver=raw,file=f0,node-name=disk0"};
}

class QmpQemuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (StorageDaemon::find_binary().empty()) {
      GTEST_SKIP() << "SKIPPED LOUDLY: qemu-storage-daemon is not installed (Debian: apt-get "
                      "install qemu-system-common); QMP integration tests did not run";
    }
    image_ = dir_.path() + "/disk0.raw";
    make_image(image_, kImageSize);
    write_at(image_, kPatternOffset, kPattern);
    daemon_ = std::make_unique<StorageDaemon>(dir_.path(), disk_args(image_));
    qmp_ = std::make_unique<BlockingQmp>(daemon_->qmp_socket(), 10s);
  }

  void TearDown() override {
    qmp_.reset();
    if (daemon_) daemon_->stop();
  }

  TempDir dir_;
  std::string image_;
  std::unique_ptr<StorageDaemon> daemon_;
  std::unique_ptr<BlockingQmp> qmp_;
};

TEST_F(QmpQemuTest, QemuVersionFromGreeting) {
  const auto version = qmp_->qemu_version();
  ASSERT_FALSE(version.empty());
  EXPECT_EQ(std::count(version.begin(), version.end(), '.'), 2) << version;
  const auto reply = qmp_->execute("query-version");
  EXPECT_EQ(reply["qemu"]["major"], qmp_->greeting()["QMP"]["version"]["qemu"]["major"]);
}

TEST_F(QmpQemuTest, QueryNamedBlockNodesFindsDisk) {
  const auto nodes = qmp_->run(query_named_block_nodes(qmp_->client()));
  const auto it = std::find_if(nodes.begin(), nodes.end(),
                               [](const BlockNodeInfo& n) { return n.node_name == "disk0"; });
  ASSERT_NE(it, nodes.end());
  EXPECT_EQ(it->driver, "raw");
  EXPECT_EQ(it->size, kImageSize);
  EXPECT_FALSE(it->read_only);
}

TEST_F(QmpQemuTest, UnknownCommandIsCommandNotFound) {
  try {
    qmp_->execute("nbdtunnel-no-such-command");
    FAIL() << "no QmpError";
  } catch (const QmpError& e) {
    EXPECT_EQ(e.phase, QmpError::Phase::execute);
    EXPECT_EQ(e.error_class, "CommandNotFound");
    EXPECT_NE(std::string(e.what()).find("nbdtunnel-no-such-command"), std::string::npos);
  }
  EXPECT_FALSE(qmp_->execute("query-block-exports").is_null());  // the session survives
}

TEST_F(QmpQemuTest, NbdServerAndExportLifecycle) {
  const std::string nbd_socket = dir_.path() + "/nbd.sock";
  auto& c = qmp_->client();
  qmp_->run(nbd_server_start_unix(c, nbd_socket));
  EXPECT_TRUE(fs::exists(nbd_socket));
  qmp_->run(block_export_add_nbd(c, "exp0", "disk0", "disk0", true));
  const auto exports = qmp_->execute("query-block-exports");
  ASSERT_EQ(exports.size(), 1u) << exports.dump();
  EXPECT_EQ(exports[0]["id"], "exp0");
  EXPECT_EQ(exports[0]["node-name"], "disk0");

  qmp_->run(block_export_del(c, "exp0"));
  qmp_->wait_event(
      "BLOCK_EXPORT_DELETED", [](const json& e) { return e["data"]["id"] == "exp0"; }, 10s);
  qmp_->run(nbd_server_stop(c));
  EXPECT_TRUE(qmp_->execute("query-block-exports").empty());
  try {
    qmp_->run(nbd_server_stop(c));  // already stopped: QEMU refuses, the client reports it
    FAIL() << "no QmpError";
  } catch (const QmpError& e) {
    EXPECT_EQ(e.error_class, "GenericError") << e.what();
  }
}

// Source daemon mirrors disk0 into an NBD node that reads the destination daemon's export.
TEST_F(QmpQemuTest, MirrorIntoNbdExportOfSecondDaemon) {
  TempDir dest_dir;
  const std::string dest_image = dest_dir.path() + "/disk0.raw";
  make_image(dest_image, kImageSize);
  StorageDaemon dest(dest_dir.path(), disk_args(dest_image));
  BlockingQmp dest_qmp(dest.qmp_socket(), 10s);
  const std::string nbd_socket = dest_dir.path() + "/nbd.sock";
  dest_qmp.run(nbd_server_start_unix(dest_qmp.client(), nbd_socket));
  dest_qmp.run(block_export_add_nbd(dest_qmp.client(), "exp0", "disk0", "disk0", true));

  auto& src = qmp_->client();
  qmp_->run(blockdev_add_nbd(src, "nbd0", nbd_socket, "disk0"));
  qmp_->run(blockdev_mirror(src, "m0", "disk0", "nbd0", MirrorSync::full, 0));
  qmp_->wait_event(
      "BLOCK_JOB_READY", [](const json& e) { return e["data"]["device"] == "m0"; }, 30s);
  const auto jobs = qmp_->run(query_block_jobs(src));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].id, "m0");
  EXPECT_EQ(jobs[0].type, "mirror");
  EXPECT_TRUE(jobs[0].ready);
  EXPECT_EQ(jobs[0].len, kImageSize);
  EXPECT_EQ(jobs[0].offset, jobs[0].len);

  qmp_->run(block_job_set_speed(src, "m0", 1 << 30));
  // Cancel at READY completes the copy without pivoting (the migration finish).
  qmp_->run(block_job_cancel(src, "m0", false));
  const auto done = qmp_->wait_event(
      "BLOCK_JOB_COMPLETED", [](const json& e) { return e["data"]["device"] == "m0"; }, 30s);
  EXPECT_FALSE(done["data"].contains("error")) << done.dump();
  EXPECT_TRUE(qmp_->run(query_block_jobs(src)).empty());
  qmp_->run(blockdev_del(src, "nbd0"));

  dest_qmp.run(block_export_del(dest_qmp.client(), "exp0"));
  dest_qmp.wait_event("BLOCK_EXPORT_DELETED", {}, 10s);
  dest_qmp.run(nbd_server_stop(dest_qmp.client()));
  dest_qmp.close();
  dest.stop();
  EXPECT_EQ(read_at(dest_image, kPatternOffset, kPattern.size()), kPattern);
}

}  // namespace
}  // namespace nbdtunnel::qmp

// Our own main (it replaces gtest_main's) so that ctest reports a missing QEMU as "Skipped"
// (exit 77, SKIP_RETURN_CODE) rather than as a pass.
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (nbdtunnel::qmp::test::StorageDaemon::find_binary().empty()) {
    std::fprintf(stderr,
                 "SKIP: qemu-storage-daemon is not installed; the QMP integration tests did NOT "
                 "run (Debian: apt-get install qemu-system-common)\n");
    // Under CI scripts/setup.sh installs QEMU: missing there is a broken install, not a skip.
    const char* ci = std::getenv("CI");
    return ci != nullptr && *ci != '\0' ? 1 : 77;
  }
  return RUN_ALL_TESTS();
}
