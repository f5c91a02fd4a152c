#pragma once
// What the libvirt engine reads from libvirt's XML: a domain's disks and a host's UUID. The XML
// comes from libvirt (or the user's --xml file): parsed with libxml2, bounded in size, with no
// network access and no entity expansion.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "tunnel/result.hpp"

namespace nbdtunnel::engine {

inline constexpr std::size_t kMaxLibvirtXml = 4u << 20;

struct DomainDisk {
  std::string target;  // <target dev='vda'/>
  std::string source;  // <source file='…'/> or dev='…' ("" for network or volume disks)
  std::string type;    // file, block, network, volume
  std::string device;  // disk, cdrom, floppy, lun
  std::string format;  // <driver type='raw'/> ("" if not given)
  bool readonly = false;
  bool shareable = false;
  friend bool operator==(const DomainDisk&, const DomainDisk&) = default;
};

// The <disk> elements of <domain><devices>, in document order.
tunnel::Result<std::vector<DomainDisk>> parse_domain_disks(std::string_view xml);
// <capabilities><host><uuid>.
tunnel::Result<std::string> parse_host_uuid(std::string_view capabilities_xml);

}  // namespace nbdtunnel::engine
