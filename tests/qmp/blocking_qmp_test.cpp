// BlockingQmp and the block_jobs.hpp helpers against a scripted fake QMP peer.

#include "qmp/blocking_qmp.hpp"

#include <gtest/gtest.h>

#include <string>

#include "fake_qmp_peer.hpp"
#include "qmp/block_jobs.hpp"

namespace nbdtunnel::qmp {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using test::FakeConnection;
using test::FakeQmpPeer;

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(BlockingQmp, HmpReturnsOutputAndEventsArePickedUp) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto cmd = c.expect_command("human-monitor-command");
    if (cmd["arguments"]["command-line"] != "info version") throw std::runtime_error(cmd.dump());
    c.event("RESUME");
    c.reply(cmd, "7.2.22\r\n");
    c.wait_for_eof();
  });
  BlockingQmp qmp(peer.path(), 5s);
  EXPECT_EQ(qmp.qemu_version(), "7.2.22");
  EXPECT_EQ(qmp.hmp("info version"), "7.2.22\r\n");
  EXPECT_EQ(qmp.wait_event("RESUME", {}, 1s)["event"], "RESUME");
  qmp.close();
  EXPECT_EQ(peer.join(), "");
}

TEST(BlockingQmp, ConstructorThrowsOnGarbageGreeting) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.send_raw("220 smtp.example.org ESMTP\r\n");
    c.wait_for_eof();
  });
  try {
    BlockingQmp qmp(peer.path(), 5s);
    ADD_FAILURE() << "no QmpError";
  } catch (const QmpError& e) {
    EXPECT_EQ(e.phase, QmpError::Phase::greeting);
  }
  EXPECT_EQ(peer.join(), "");
}

TEST(BlockJobs, QueryBlockJobsParsesEntries) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.reply(c.expect_command("query-block-jobs"), json::parse(R"([{"auto-finalize": true,
        "io-status": "ok", "device": "m0", "auto-dismiss": true, "busy": false, "len": 1048576,
        "offset": 524288, "status": "running", "paused": false, "speed": 0, "ready": false,
        "type": "mirror"}])"));
    c.wait_for_eof();
  });
  BlockingQmp qmp(peer.path(), 5s);
  auto jobs = qmp.run(query_block_jobs(qmp.client()));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].id, "m0");
  EXPECT_EQ(jobs[0].type, "mirror");
  EXPECT_EQ(jobs[0].status, "running");
  EXPECT_EQ(jobs[0].offset, 524288u);
  EXPECT_EQ(jobs[0].len, 1048576u);
  EXPECT_FALSE(jobs[0].ready);
  qmp.close();
  EXPECT_EQ(peer.join(), "");
}

TEST(BlockJobs, MalformedQueryReplyIsQmpErrorNotCrash) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    c.reply(c.expect_command("query-block-jobs"), json::parse(R"([{"device": "m0"}])"));
    c.reply(c.expect_command("query-named-block-nodes"), json::object());
    c.reply(c.expect_command("query-named-block-nodes"),
            json::parse(R"([{"node-name": "disk0", "drv": "raw", "ro": false}])"));
    c.wait_for_eof();
  });
  BlockingQmp qmp(peer.path(), 5s);
  auto expect_malformed = [&](auto op, const std::string& what) {
    try {
      qmp.run(std::move(op));
      ADD_FAILURE() << "no QmpError for " << what;
    } catch (const QmpError& e) {
      EXPECT_EQ(e.phase, QmpError::Phase::execute);
      EXPECT_TRUE(contains(e.what(), "malformed reply")) << e.what();
      EXPECT_TRUE(contains(e.what(), what)) << e.what();
    }
  };
  expect_malformed(query_block_jobs(qmp.client()), "'type'");
  expect_malformed(query_named_block_nodes(qmp.client()), "expected an array");
  expect_malformed(query_named_block_nodes(qmp.client()), "'image'");
  qmp.close();
  EXPECT_EQ(peer.join(), "");
}

TEST(BlockJobs, CommandsSendTheDocumentedArguments) {
  FakeQmpPeer peer([](FakeConnection& c) {
    c.negotiate();
    auto check = [&](const char* name, const char* expected_args) {
      auto cmd = c.expect_command(name);
      if (cmd["arguments"] != json::parse(expected_args)) {
        throw std::runtime_error(std::string(name) + " got " + cmd["arguments"].dump());
      }
      c.reply(cmd, json::object());
    };
    check(
        "blockdev-add",
        R"({"driver":"nbd","node-name":"nbd0","server":{"type":"unix","path":"/s"},"export":"e"})");
    check("blockdev-mirror",
          R"({"job-id":"m0","device":"disk0","target":"nbd0","sync":"top","speed":1024,
              "auto-finalize":true,"auto-dismiss":false})");
    check("block-job-set-speed", R"({"device":"m0","speed":0})");
    check("block-job-cancel", R"({"device":"m0","force":true})");
    check("nbd-server-start", R"({"addr":{"type":"unix","data":{"path":"/n"}}})");
    check("block-export-add",
          R"({"type":"nbd","id":"x0","node-name":"disk0","name":"disk0","writable":true})");
    check("block-export-del", R"({"id":"x0"})");
    check("blockdev-del", R"({"node-name":"nbd0"})");
    c.wait_for_eof();
  });
  BlockingQmp qmp(peer.path(), 5s);
  auto& c = qmp.client();
  qmp.run(blockdev_add_nbd(c, "nbd0", "/s", "e"));
  qmp.run(
      blockdev_mirror(c, "m0", "disk0", "nbd0", MirrorSync::top, 1024, {.auto_dismiss = false}));
  qmp.run(block_job_set_speed(c, "m0", 0));
  qmp.run(block_job_cancel(c, "m0", true));
  qmp.run(nbd_server_start_unix(c, "/n"));
  qmp.run(block_export_add_nbd(c, "x0", "disk0", "disk0", true));
  qmp.run(block_export_del(c, "x0"));
  qmp.run(blockdev_del(c, "nbd0"));
  qmp.close();
  EXPECT_EQ(peer.join(), "");
}

}  // namespace
}  // namespace nbdtunnel::qmp
