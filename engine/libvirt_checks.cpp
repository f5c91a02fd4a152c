#include "engine/libvirt_checks.hpp"

#include <fmt/format.h>

#include <sstream>

namespace nbdtunnel::engine {

namespace {

using Verdict = CheckResult::Verdict;

std::vector<unsigned long> parts(const std::string& v) {
  std::vector<unsigned long> out;
  std::stringstream ss(v);
  std::string piece;
  while (std::getline(ss, piece, '.')) {
    try {
      out.push_back(std::stoul(piece));
    } catch (const std::exception&) {
      out.push_back(0);
    }
  }
  return out;
}

}  // namespace

int compare_versions(const std::string& a, const std::string& b) {
  auto pa = parts(a), pb = parts(b);
  const std::size_t n = std::max(pa.size(), pb.size());
  pa.resize(n, 0);
  pb.resize(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    if (pa[i] != pb[i]) return pa[i] < pb[i] ? -1 : 1;
  }
  return 0;
}

std::vector<CheckResult> evaluate_libvirt_checks(const LibvirtCheckInputs& in) {
  std::vector<CheckResult> out;
  auto add = [&out](std::string name, Verdict v, std::string detail) {
    out.push_back({std::move(name), v, std::move(detail)});
  };
  if (!in.dest_error.empty()) {
    add("destination", Verdict::fail, in.dest_error);
  } else {
    add("destination", Verdict::pass,
        fmt::format("nbdtunnel dest --libvirt at {} answered", in.destination));
  }

  const bool both = in.source.error.empty() && in.dest.error.empty();
  if (!in.source.error.empty()) add("libvirt", Verdict::fail, "source: " + in.source.error);
  if (!in.dest.error.empty()) add("libvirt", Verdict::fail, "destination: " + in.dest.error);
  if (both) {
    const std::string versions = fmt::format("source {}, destination {}", in.source.libvirt_version,
                                             in.dest.libvirt_version);
    if (compare_versions(in.source.libvirt_version, kMinLibvirt) < 0 ||
        compare_versions(in.dest.libvirt_version, kMinLibvirt) < 0) {
      add("libvirt", Verdict::fail,
          fmt::format("{}: migrating through UNIX sockets needs libvirt {} or later on both hosts",
                      versions, kMinLibvirt));
    } else {
      add("libvirt", Verdict::pass, versions);
    }
    if (in.source.hypervisor != in.dest.hypervisor) {
      add("hypervisor", Verdict::fail,
          fmt::format("source {}, destination {}: not the same hypervisor", in.source.hypervisor,
                      in.dest.hypervisor));
    } else if (compare_versions(in.dest.hypervisor_version, in.source.hypervisor_version) < 0) {
      add("hypervisor", Verdict::warn,
          fmt::format("{} {} on the source, {} on the destination: migrating to an older QEMU "
                      "can fail for a machine type it does not know",
                      in.source.hypervisor, in.source.hypervisor_version,
                      in.dest.hypervisor_version));
    } else {
      add("hypervisor", Verdict::pass,
          fmt::format("{} {} → {}", in.source.hypervisor, in.source.hypervisor_version,
                      in.dest.hypervisor_version));
    }
    if (in.source.host_uuid.empty() || in.source.host_uuid == in.dest.host_uuid) {
      add("hosts", Verdict::fail,
          fmt::format("source and destination are the same host (host UUID {}): libvirt refuses "
                      "to migrate a domain to its own host",
                      in.source.host_uuid));
    } else {
      add("hosts", Verdict::pass,
          fmt::format("{} ({}) → {} ({})", in.source.hostname, in.source.host_uuid,
                      in.dest.hostname, in.dest.host_uuid));
    }
    add("mode", Verdict::pass,
        in.p2p ? "peer-to-peer: the source libvirtd reaches the destination's through the "
                 "channel (direct is possible too)"
               : "direct: this program drives both libvirtds, the destination's through the "
                 "channel (--p2p is possible too)");
  }

  if (!in.domain_found) {
    add("domain", Verdict::fail, in.domain_error);
  } else if (!in.domain_running) {
    add("domain", Verdict::fail,
        fmt::format("domain '{}' is not running: a live migration needs a running domain",
                    in.domain));
  } else if (in.domain_job_active) {
    add("domain", Verdict::fail,
        fmt::format("'{}' already has a job running (another migration?): wait for it, or end it "
                    "with `virsh domjobabort {}`; a killed migrate's job ends by itself within "
                    "seconds",
                    in.domain, in.domain));
  } else {
    add("domain", Verdict::pass, fmt::format("'{}' is running", in.domain));
  }

  if (in.dest_name_taken) {
    add("destination domain", Verdict::fail,
        fmt::format("the destination already has a domain named '{}' (left by an earlier "
                    "migration that is still being removed, or another one): remove it, or "
                    "choose another name with --dname",
                    in.dest_name));
  }
  if (!in.disks_error.empty()) add("disks", Verdict::fail, in.disks_error);
  for (const LibvirtDiskFacts& d : in.disks) {
    const std::string name = "disk " + d.target;
    const std::string src = fmt::format("{} ({})", d.source_path, format_bytes(d.size));
    if (!d.dest) {
      add(name, Verdict::warn, src + ": the destination image could not be checked");
    } else if (!d.dest->exists) {
      add(name, Verdict::fail,
          fmt::format("{}: the destination image {} does not exist (create it with the source "
                      "disk's size, e.g. qemu-img create)",
                      src, d.dest_path));
    } else if (d.dest->size < d.size) {
      add(name, Verdict::fail,
          fmt::format("{}: the destination image {} holds {}, less than the source disk", src,
                      d.dest_path, format_bytes(d.dest->size)));
    } else if (!d.dest->writable) {
      add(name, Verdict::fail,
          fmt::format("{}: the destination image {} is not writable", src, d.dest_path));
    } else {
      add(name, Verdict::pass,
          fmt::format("{} → {} ({})", src, d.dest_path, format_bytes(d.dest->size)));
    }
  }
  return out;
}

}  // namespace nbdtunnel::engine
