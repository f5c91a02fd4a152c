// evaluate_checks: one verdict per fact, each failing on its own.
#include "engine/migration_checks.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace nbdtunnel::engine {
namespace {

using V = CheckResult::Verdict;

CheckInputs healthy() {
  CheckInputs in;
  in.disks = {{"disk0", "disk0"}};
  in.destination = "127.0.0.1:1";
  in.source_host_id = "src";
  in.source_qemu_version = "7.2.22";
  in.dest_hello.host_id = "dst";
  in.source_nodes = {{"disk0", "raw", 1 << 20, false}};
  PrepareResult pr;
  pr.qemu_version = "7.2.22";
  pr.disks = {{"disk0", true, 1 << 20, true}};
  in.dest = pr;
  return in;
}

V verdict(const std::vector<CheckResult>& rs, const std::string& name) {
  auto it =
      std::find_if(rs.begin(), rs.end(), [&](const CheckResult& r) { return r.name == name; });
  EXPECT_NE(it, rs.end()) << "no check named " << name;
  return it == rs.end() ? V::fail : it->verdict;
}

bool all_pass(const std::vector<CheckResult>& rs) {
  return std::all_of(rs.begin(), rs.end(),
                     [](const CheckResult& r) { return r.verdict == V::pass; });
}

TEST(MigrationChecks, HealthyInputsAllPass) {
  EXPECT_TRUE(all_pass(evaluate_checks(healthy())));
}

TEST(MigrationChecks, SameHostFails) {
  auto in = healthy();
  in.dest_hello.host_id = "src";
  EXPECT_EQ(verdict(evaluate_checks(in), "not the same host"), V::fail);
}

TEST(MigrationChecks, MissingSourceNodeFails) {
  auto in = healthy();
  in.source_nodes.clear();
  EXPECT_EQ(verdict(evaluate_checks(in), "disk disk0 on source"), V::fail);
}

TEST(MigrationChecks, MissingDestinationNodeFails) {
  auto in = healthy();
  in.dest->disks[0].exists = false;
  EXPECT_EQ(verdict(evaluate_checks(in), "disk disk0 on destination"), V::fail);
}

TEST(MigrationChecks, SmallerDestinationFailsLargerWarns) {
  auto in = healthy();
  in.dest->disks[0].size = 1 << 19;
  EXPECT_EQ(verdict(evaluate_checks(in), "disk disk0 size"), V::fail);
  in.dest->disks[0].size = 1 << 21;
  EXPECT_EQ(verdict(evaluate_checks(in), "disk disk0 size"), V::warn);
}

TEST(MigrationChecks, ReadOnlyDestinationFails) {
  auto in = healthy();
  in.dest->disks[0].writable = false;
  EXPECT_EQ(verdict(evaluate_checks(in), "disk disk0 writable"), V::fail);
}

TEST(MigrationChecks, JobOnTheDiskFailsOtherJobsWarn) {
  auto in = healthy();
  in.source_jobs = {{"disk0", "mirror", "running", 0, 0, 0, false}};
  EXPECT_EQ(verdict(evaluate_checks(in), "no block job on disk0"), V::fail);
  in.source_jobs = {{"backup-x", "backup", "running", 0, 0, 0, false}};
  EXPECT_EQ(verdict(evaluate_checks(in), "no block job on disk0"), V::warn);
}

TEST(MigrationChecks, AnotherMigrationsJobFailsOnlyOnItsOwnDisks) {
  auto in = healthy();
  in.source_jobs = {{"nbdtunnel-mirror-first-0", "mirror", "running", 0, 0, 0, false}};
  in.other_migrations = {{"nbdtunnel-mirror-first-0", "first", LockHolder{"42", {"disk7"}}}};
  EXPECT_EQ(verdict(evaluate_checks(in), "no block job on disk0"), V::pass);
  in.other_migrations[0].holder->disks = {"disk0"};
  EXPECT_EQ(verdict(evaluate_checks(in), "no block job on disk0"), V::fail);
  // Whose disks are not known: like any other job.
  in.other_migrations[0].holder.reset();
  EXPECT_EQ(verdict(evaluate_checks(in), "no block job on disk0"), V::warn);
}

TEST(MigrationChecks, DifferentMajorVersionsWarn) {
  auto in = healthy();
  in.dest->qemu_version = "8.0.0";
  EXPECT_EQ(verdict(evaluate_checks(in), "QEMU versions"), V::warn);
}

TEST(MigrationChecks, DestinationErrorFailsEachDisk) {
  auto in = healthy();
  in.dest.reset();
  in.dest_error = "destination: started without --qmp";
  auto rs = evaluate_checks(in);
  EXPECT_EQ(verdict(rs, "disk disk0 on destination"), V::fail);
}

}  // namespace
}  // namespace nbdtunnel::engine
