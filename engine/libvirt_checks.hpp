#pragma once
// The pre-migration checks of `nbdtunnel migrate --domain`, as a pure function of what libvirt on
// both hosts and the destination daemon reported: each one pass, warn or fail with a reason.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/migration_protocol.hpp"
#include "engine/progress.hpp"

namespace nbdtunnel::engine {

// What one host's libvirt said; `error` set when it could not be asked.
struct LibvirtHostFacts {
  std::string libvirt_version;     // "9.0.0"
  std::string hypervisor;          // "QEMU"
  std::string hypervisor_version;  // "7.2.0"
  std::string host_uuid;
  std::string hostname;
  std::string error;
};

struct LibvirtDiskFacts {
  std::string target;       // vda
  std::string source_path;  // the image on the source host
  std::string dest_path;    // the image it is copied into (the same path unless --xml says else)
  std::uint64_t size = 0;   // the source disk's capacity
  std::optional<DestDiskReport> dest;  // what the destination daemon found at dest_path
};

struct LibvirtCheckInputs {
  std::string destination;  // HOST:PORT of the destination daemon
  std::string dest_error;   // the destination daemon's answer to the check, if it failed
  LibvirtHostFacts source, dest;
  std::string domain;
  bool domain_found = false;
  bool domain_running = false;
  bool domain_job_active = false;  // libvirt runs a job on the domain (another migration, ...)
  std::string domain_error;
  std::string dest_name;         // the domain's name on the destination (--dname or its own)
  bool dest_name_taken = false;  // the destination already has a domain of that name
  std::vector<LibvirtDiskFacts> disks;
  std::string disks_error;  // the disks could not be listed (or none is to be copied)
  bool p2p = false;
};

// libvirt passes unix:// migration and disk URIs to QEMU from 6.8.0 on.
inline constexpr const char* kMinLibvirt = "6.8.0";

std::vector<CheckResult> evaluate_libvirt_checks(const LibvirtCheckInputs& in);

// -1, 0 or 1 as dotted version a is older, the same or newer than b ("9.0.0" vs "10.1").
int compare_versions(const std::string& a, const std::string& b);

}  // namespace nbdtunnel::engine
