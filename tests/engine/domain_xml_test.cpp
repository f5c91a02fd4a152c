// engine/domain_xml: the disks of a domain and a host's UUID out of libvirt's XML, and refusals
// of XML that is malformed, too large or carries a DOCTYPE.
#include "engine/domain_xml.hpp"

#include <gtest/gtest.h>

namespace nbdtunnel::engine {
namespace {

constexpr const char* kDomain = R"(<domain type='qemu'>
  <name>guest</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/a.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/vg/b'/>
      <target dev='vdb' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
  </devices>
</domain>)";

TEST(DomainXml, ListsEveryDiskWithItsSourceAndFlags) {
  auto disks = parse_domain_disks(kDomain);
  ASSERT_TRUE(disks) << disks.error().message;
  ASSERT_EQ(disks->size(), 3u);
  EXPECT_EQ((*disks)[0], (DomainDisk{"vda", "/var/lib/libvirt/images/a.qcow2", "file", "disk",
                                     "qcow2", false, false}));
  EXPECT_EQ((*disks)[1].source, "/dev/vg/b");
  EXPECT_TRUE((*disks)[1].shareable);
  EXPECT_EQ((*disks)[2].device, "cdrom");
  EXPECT_TRUE((*disks)[2].readonly);
  EXPECT_TRUE((*disks)[2].source.empty());
}

TEST(DomainXml, ADomainWithoutDevicesHasNoDisks) {
  auto disks = parse_domain_disks("<domain><name>x</name></domain>");
  ASSERT_TRUE(disks);
  EXPECT_TRUE(disks->empty());
}

TEST(DomainXml, RefusesWhatIsNotADomain) {
  for (const char* bad : {"", "<domain>", "<network/>", "not xml at all",
                          "<domain><devices><disk type='file'/></devices></domain>"}) {
    auto disks = parse_domain_disks(bad);
    EXPECT_FALSE(disks) << bad;
    if (!disks) {
      EXPECT_FALSE(disks.error().message.empty());
    }
  }
}

TEST(DomainXml, RefusesADoctypeSoNoEntityIsEverExpanded) {
  auto disks = parse_domain_disks(
      "<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]><domain><name>&b;</name>"
      "</domain>");
  ASSERT_FALSE(disks);
  EXPECT_NE(disks.error().message.find("DOCTYPE"), std::string::npos) << disks.error().message;
}

TEST(DomainXml, RefusesXmlLargerThanTheLimit) {
  std::string big = "<domain><name>";
  big.append(kMaxLibvirtXml, 'x');
  big += "</name></domain>";
  auto disks = parse_domain_disks(big);
  ASSERT_FALSE(disks);
  EXPECT_NE(disks.error().message.find("bytes"), std::string::npos) << disks.error().message;
}

TEST(DomainXml, ReadsTheHostUuidOfCapabilities) {
  auto uuid = parse_host_uuid(
      "<capabilities><host><uuid>8b6b7a8e-1b7f-4c3e-9d0a-2f1e6c5b4a39</uuid></host>"
      "</capabilities>");
  ASSERT_TRUE(uuid) << uuid.error().message;
  EXPECT_EQ(*uuid, "8b6b7a8e-1b7f-4c3e-9d0a-2f1e6c5b4a39");
  EXPECT_FALSE(parse_host_uuid("<capabilities><host/></capabilities>"));
  EXPECT_FALSE(parse_host_uuid("<domain/>"));
}

}  // namespace
}  // namespace nbdtunnel::engine
