#include "engine/migration_checks.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace nbdtunnel::engine {

namespace {
using V = CheckResult::Verdict;

std::string major_of(const std::string& version) {
  return version.substr(0, version.find('.'));
}
}  // namespace

std::optional<std::uint64_t> source_size(const CheckInputs& in, const std::string& node) {
  for (const auto& n : in.source_nodes) {
    if (n.node_name == node) return n.size;
  }
  return std::nullopt;
}

std::vector<CheckResult> evaluate_checks(const CheckInputs& in) {
  std::vector<CheckResult> out;
  out.push_back({"destination reachable", V::pass,
                 fmt::format("{} (host '{}', protocol {})", in.destination, in.dest_hello.hostname,
                             in.dest_hello.version)});

  if (in.dest_hello.host_id == in.source_host_id) {
    out.push_back({"not the same host", V::fail,
                   fmt::format("source and destination have the same host id '{}'; migrating to "
                               "the same host is refused",
                               in.source_host_id)});
  } else {
    out.push_back({"not the same host", V::pass, "host ids differ"});
  }

  const std::string dest_version = in.dest ? in.dest->qemu_version : "";
  if (!in.dest) {
    out.push_back({"QEMU versions", V::warn,
                   fmt::format("source {}, destination unknown", in.source_qemu_version)});
  } else if (major_of(dest_version) != major_of(in.source_qemu_version)) {
    out.push_back({"QEMU versions", V::warn,
                   fmt::format("source {}, destination {}: different major versions",
                               in.source_qemu_version, dest_version)});
  } else {
    out.push_back({"QEMU versions", V::pass,
                   fmt::format("source {}, destination {}", in.source_qemu_version, dest_version)});
  }

  for (const DiskSpec& d : in.disks) {
    const std::string label = d.node == d.dest_node ? d.node : d.node + "=" + d.dest_node;
    const auto size = source_size(in, d.node);
    if (!size) {
      out.push_back({"disk " + label + " on source", V::fail,
                     fmt::format("node '{}' does not exist in the source QEMU", d.node)});
    } else {
      out.push_back({"disk " + label + " on source", V::pass, format_bytes(*size)});
    }

    // query-block-jobs does not say which node a job is on: a job named after the disk is on
    // it, another migration's is on the disks its run recorded, and any other job might be.
    auto job = std::find_if(in.source_jobs.begin(), in.source_jobs.end(),
                            [&](const qmp::BlockJobInfo& j) { return j.id == d.node; });
    auto other = std::find_if(
        in.other_migrations.begin(), in.other_migrations.end(), [&](const OtherMigrationJob& o) {
          return o.holder && std::find(o.holder->disks.begin(), o.holder->disks.end(), d.node) !=
                                 o.holder->disks.end();
        });
    std::vector<std::string> unknown;  // jobs whose disks are not known
    std::size_t elsewhere = 0;         // jobs of other migrations, on other disks
    for (const auto& j : in.source_jobs) {
      auto o = std::find_if(in.other_migrations.begin(), in.other_migrations.end(),
                            [&](const OtherMigrationJob& m) { return m.job == j.id; });
      if (o != in.other_migrations.end() && o->holder) {
        ++elsewhere;
      } else {
        unknown.push_back(j.id);
      }
    }
    if (job != in.source_jobs.end()) {
      out.push_back({"no block job on " + d.node, V::fail,
                     fmt::format("block job '{}' ({}, {}) is running on it", job->id, job->type,
                                 job->status)});
    } else if (other != in.other_migrations.end()) {
      out.push_back({"no block job on " + d.node, V::fail,
                     fmt::format("migration '{}' (pid {}) is copying it (job '{}')", other->tag,
                                 other->holder->pid, other->job)});
    } else if (!unknown.empty()) {
      out.push_back({"no block job on " + d.node, V::warn,
                     fmt::format("{} other block job(s) run in the source QEMU (first: '{}')",
                                 unknown.size(), unknown.front())});
    } else if (elsewhere > 0) {
      out.push_back(
          {"no block job on " + d.node, V::pass,
           fmt::format("none on it; {} job(s) of other migrations copy other disks", elsewhere)});
    } else {
      out.push_back({"no block job on " + d.node, V::pass, "none running"});
    }

    if (!in.dest) {
      out.push_back({"disk " + label + " on destination", V::fail, in.dest_error});
      continue;
    }
    auto state = std::find_if(in.dest->disks.begin(), in.dest->disks.end(),
                              [&](const DestDiskReport& s) { return s.node == d.dest_node; });
    if (state == in.dest->disks.end() || !state->exists) {
      out.push_back({"disk " + label + " on destination", V::fail,
                     fmt::format("node '{}' does not exist in the destination QEMU", d.dest_node)});
      continue;
    }
    out.push_back({"disk " + label + " on destination", V::pass,
                   fmt::format("node '{}' exists", d.dest_node)});
    if (size && state->size < *size) {
      out.push_back({"disk " + label + " size", V::fail,
                     fmt::format("destination {} is smaller than source {}",
                                 format_bytes(state->size), format_bytes(*size))});
    } else if (size && state->size > *size) {
      out.push_back(
          {"disk " + label + " size", V::warn,
           fmt::format("destination {} is larger than source {}; only the first {} are "
                       "written, the tail is left as it is",
                       format_bytes(state->size), format_bytes(*size), format_bytes(*size))});
    } else {
      out.push_back({"disk " + label + " size", V::pass, format_bytes(state->size)});
    }
    out.push_back(
        {"disk " + label + " writable", state->writable ? V::pass : V::fail,
         state->writable ? "destination node is writable" : "destination node is read-only"});
  }
  return out;
}

}  // namespace nbdtunnel::engine
