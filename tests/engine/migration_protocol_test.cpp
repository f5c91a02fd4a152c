// PREPARE and FINISH bodies: golden bytes and the limits a peer cannot get past.
#include "engine/migration_protocol.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::engine {
namespace {

TEST(MigrationProtocol, GoldenPrepareBody) {
  Prepare p;
  p.migration_id = "m1";
  p.disks.push_back({"d0", 0x100000000ull});
  p.flags = kPrepareCheckOnly;
  std::vector<std::uint8_t> body;
  encode_prepare(body, p);
  const std::vector<std::uint8_t> expected = {
      0, 0, 0, 2, 'm', '1', 0, 0,  // migration_id "m1" + padding
      0, 0, 0, 1,                  // one disk
      0, 0, 0, 2, 'd', '0', 0, 0,  //   node "d0"
      0, 0, 0, 1, 0,   0,   0, 0,  //   size 4 GiB (hyper)
      0, 0, 0, 1,                  // flags: CHECK_ONLY
  };
  EXPECT_EQ(body, expected);
  tunnel::Result<Prepare> d = decode_prepare(body);
  ASSERT_TRUE(d.ok()) << d.error().message;
  ASSERT_EQ(d->disks.size(), 1u);
  EXPECT_EQ(d->disks[0].size, 0x100000000ull);
}

TEST(MigrationProtocol, PrepareWithTooManyDisksIsRefusedBeforeReading) {
  std::vector<std::uint8_t> body = {0, 0, 0, 1, 'm', 0, 0, 0, 0xff, 0xff, 0xff, 0xff};
  tunnel::Result<Prepare> d = decode_prepare(body);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("the limit is 64"), std::string::npos);
}

TEST(MigrationProtocol, MigrationIdsThatCouldEscapeAPathAreRefused) {
  EXPECT_TRUE(valid_migration_id("vm-1.disks_2"));
  EXPECT_FALSE(valid_migration_id(""));
  EXPECT_FALSE(valid_migration_id("x/../y"));
  EXPECT_FALSE(valid_migration_id("a b"));
  EXPECT_FALSE(valid_migration_id(".hidden"));
  EXPECT_FALSE(valid_migration_id(std::string(65, 'a')));
  Prepare p;
  p.migration_id = "../etc";
  p.disks.push_back({"d0", 1});
  std::vector<std::uint8_t> body;
  encode_prepare(body, p);
  tunnel::Result<Prepare> d = decode_prepare(body);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message, "");
}

TEST(MigrationProtocol, PrepareResultRoundTrip) {
  PrepareResult r;
  r.qemu_version = "7.2.22";
  r.target = "migration/m1";
  r.disks.push_back({"d0", true, 4096, false});
  std::vector<std::uint8_t> body;
  encode_prepare_result(body, r);
  tunnel::Result<PrepareResult> d = decode_prepare_result(body);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->target, "migration/m1");
  ASSERT_EQ(d->disks.size(), 1u);
  EXPECT_TRUE(d->disks[0].exists);
  EXPECT_FALSE(d->disks[0].writable);
  for (std::size_t n = 0; n < body.size(); ++n) {
    tunnel::Result<PrepareResult> truncated = decode_prepare_result(std::span(body).first(n));
    ASSERT_FALSE(truncated.ok()) << n;
    EXPECT_NE(truncated.error().message, "") << n;
  }
}

TEST(MigrationProtocol, GoldenFinishBody) {
  std::vector<std::uint8_t> body;
  encode_finish(body, Finish{"m1", kFinishAbort});
  const std::vector<std::uint8_t> expected = {
      0, 0, 0, 2, 'm', '1', 0, 0,  // migration_id "m1" + padding
      0, 0, 0, 1,                  // flags: ABORT
  };
  EXPECT_EQ(body, expected);
  tunnel::Result<Finish> d = decode_finish(body);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->migration_id, "m1");
  EXPECT_EQ(d->flags, kFinishAbort);
}

TEST(MigrationProtocol, ProcedureNumbersAreThoseOfTheWire) {
  EXPECT_EQ(procedure_number(MigrationProc::prepare), 4u);
  EXPECT_EQ(procedure_number(MigrationProc::finish), 5u);
}

}  // namespace
}  // namespace nbdtunnel::engine
