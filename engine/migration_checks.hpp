#pragma once
// Pre-migration checks as a pure function of what both sides reported: easy to test one by one.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/migration_lock.hpp"
#include "engine/migration_protocol.hpp"
#include "engine/progress.hpp"
#include "qmp/block_jobs.hpp"
#include "tunnel/protocol.hpp"

namespace nbdtunnel::engine {

struct DiskSpec {
  std::string node;       // source node name
  std::string dest_node;  // destination node name (defaults to node)
};

// A job another live migration of the source QEMU runs, and what its run recorded in its lock
// (no holder: it could not be read, so the job's disks are unknown).
struct OtherMigrationJob {
  std::string job;
  std::string tag;
  std::optional<LockHolder> holder;
};

struct CheckInputs {
  std::vector<DiskSpec> disks;
  std::string destination;  // HOST:PORT, for messages
  std::string source_host_id;
  std::string source_qemu_version;
  tunnel::Hello dest_hello;
  std::vector<qmp::BlockNodeInfo> source_nodes;
  std::vector<qmp::BlockJobInfo> source_jobs;
  // Those of source_jobs that other live migrations of this QEMU run.
  std::vector<OtherMigrationJob> other_migrations;
  // PREPARE (check only) result, or the error the destination gave instead.
  std::optional<PrepareResult> dest;
  std::string dest_error;
};

std::vector<CheckResult> evaluate_checks(const CheckInputs& in);

// The size of a source disk, if the node exists.
std::optional<std::uint64_t> source_size(const CheckInputs& in, const std::string& node);

}  // namespace nbdtunnel::engine
