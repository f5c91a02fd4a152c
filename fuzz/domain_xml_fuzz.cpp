// parse_domain_disks and parse_host_uuid (engine/domain_xml.hpp) on arbitrary bytes: libvirt's
// XML, or a user's --xml file. Each refuses with a message or returns what it found; every disk
// has a target, and the same input parses the same way twice.
#include <string_view>

#include "engine/domain_xml.hpp"
#include "fuzz/fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nbdtunnel::engine;
  const std::string_view xml(reinterpret_cast<const char*>(data), size);
  auto disks = parse_domain_disks(xml);
  if (!disks) {
    FUZZ_CHECK(!disks.error().message.empty());
  } else {
    for (const DomainDisk& d : *disks) FUZZ_CHECK(!d.target.empty());
    auto again = parse_domain_disks(xml);
    FUZZ_CHECK(again.ok() && *again == *disks);
  }
  auto uuid = parse_host_uuid(xml);
  FUZZ_CHECK(uuid ? !uuid->empty() : !uuid.error().message.empty());
  return 0;
}
