// engine/libvirt_checks: each check of `migrate --domain` passes, warns or fails for the right
// reason, and says which path or version is at fault.
#include "engine/libvirt_checks.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::engine {
namespace {

using Verdict = CheckResult::Verdict;

LibvirtCheckInputs good() {
  LibvirtCheckInputs in;
  in.destination = "10.0.0.2:7777";
  in.source = {"9.0.0", "QEMU", "7.2.0", "uuid-source", "src", ""};
  in.dest = {"9.0.0", "QEMU", "7.2.0", "uuid-dest", "dst", ""};
  in.domain = "guest";
  in.domain_found = true;
  in.domain_running = true;
  LibvirtDiskFacts d;
  d.target = "vda";
  d.source_path = d.dest_path = "/images/guest.raw";
  d.size = 1u << 30;
  d.dest = DestDiskReport{"/images/guest.raw", true, 1u << 30, true};
  in.disks.push_back(d);
  return in;
}

const CheckResult* find(const std::vector<CheckResult>& r, const std::string& name) {
  for (const auto& c : r) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

TEST(LibvirtChecks, AllPassForTwoGoodHosts) {
  const auto r = evaluate_libvirt_checks(good());
  for (const auto& c : r) EXPECT_EQ(c.verdict, Verdict::pass) << c.name << ": " << c.detail;
  ASSERT_NE(find(r, "disk vda"), nullptr);
  ASSERT_NE(find(r, "hosts"), nullptr);
}

TEST(LibvirtChecks, TheSameHostFailsAsLibvirtWould) {
  auto in = good();
  in.dest.host_uuid = in.source.host_uuid;
  const auto r = evaluate_libvirt_checks(in);
  const auto* c = find(r, "hosts");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->verdict, Verdict::fail);
  EXPECT_NE(c->detail.find("same host"), std::string::npos) << c->detail;
}

TEST(LibvirtChecks, AMissingOrSmallDestinationImageFailsNamingThePath) {
  auto in = good();
  in.disks[0].dest->exists = false;
  auto r = evaluate_libvirt_checks(in);
  EXPECT_EQ(find(r, "disk vda")->verdict, Verdict::fail);
  EXPECT_NE(find(r, "disk vda")->detail.find("/images/guest.raw does not exist"),
            std::string::npos);
  in = good();
  in.disks[0].dest->size = 1u << 20;
  r = evaluate_libvirt_checks(in);
  EXPECT_EQ(find(r, "disk vda")->verdict, Verdict::fail);
  EXPECT_NE(find(r, "disk vda")->detail.find("less than"), std::string::npos);
  in = good();
  in.disks[0].dest->writable = false;
  EXPECT_EQ(find(evaluate_libvirt_checks(in), "disk vda")->verdict, Verdict::fail);
}

TEST(LibvirtChecks, AStoppedOrMissingDomainFails) {
  auto in = good();
  in.domain_running = false;
  EXPECT_EQ(find(evaluate_libvirt_checks(in), "domain")->verdict, Verdict::fail);
  in.domain_found = false;
  in.domain_error = "domain 'guest': not found";
  const auto r = evaluate_libvirt_checks(in);
  const auto* c = find(r, "domain");
  EXPECT_EQ(c->verdict, Verdict::fail);
  EXPECT_EQ(c->detail, "domain 'guest': not found");
}

TEST(LibvirtChecks, ADomainWithAJobRunningFails) {
  auto in = good();
  in.domain_job_active = true;
  const auto r = evaluate_libvirt_checks(in);
  const auto* c = find(r, "domain");
  EXPECT_EQ(c->verdict, Verdict::fail);
  EXPECT_NE(c->detail.find("virsh domjobabort guest"), std::string::npos) << c->detail;
}

TEST(LibvirtChecks, ANameTakenOnTheDestinationFailsAndSuggestsDname) {
  auto in = good();
  in.dest_name = "guest";
  in.dest_name_taken = true;
  const auto r = evaluate_libvirt_checks(in);
  const auto* c = find(r, "destination domain");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->verdict, Verdict::fail);
  EXPECT_NE(c->detail.find("--dname"), std::string::npos) << c->detail;
  EXPECT_EQ(find(evaluate_libvirt_checks(good()), "destination domain"), nullptr);
}

TEST(LibvirtChecks, VersionsAreCompared) {
  auto in = good();
  in.dest.hypervisor_version = "6.2.0";
  EXPECT_EQ(find(evaluate_libvirt_checks(in), "hypervisor")->verdict, Verdict::warn);
  in = good();
  in.source.libvirt_version = "6.0.0";
  EXPECT_EQ(find(evaluate_libvirt_checks(in), "libvirt")->verdict, Verdict::fail);
  in = good();
  in.dest.hypervisor = "LXC";
  EXPECT_EQ(find(evaluate_libvirt_checks(in), "hypervisor")->verdict, Verdict::fail);
  EXPECT_EQ(compare_versions("9.0.0", "10.1"), -1);
  EXPECT_EQ(compare_versions("7.2", "7.2.0"), 0);
  EXPECT_EQ(compare_versions("7.10.0", "7.2.0"), 1);
}

TEST(LibvirtChecks, AnUnreachableDestinationLibvirtFails) {
  auto in = good();
  in.dest.error = "the destination libvirtd did not answer";
  const auto r = evaluate_libvirt_checks(in);
  const auto* c = find(r, "libvirt");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->verdict, Verdict::fail);
  EXPECT_NE(c->detail.find("destination:"), std::string::npos);
  EXPECT_EQ(find(r, "hosts"), nullptr) << "no comparison with a host that did not answer";
}

}  // namespace
}  // namespace nbdtunnel::engine
