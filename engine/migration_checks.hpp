#pragma once
// Pre-migration checks as a pure function of what both sides reported: easy to test one by one.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/migration_protocol.hpp"
#include "engine/progress.hpp"
#include "qmp/block_jobs.hpp"
#include "tunnel/protocol.hpp"

namespace nbdtunnel::engine {

struct DiskSpec {
  std::string node;       // source node name
  std::string dest_node;  // destination node name (defaults to node)
};

struct CheckInputs {
  std::vector<DiskSpec> disks;
  std::string destination;  // HOST:PORT, for messages
  std::string source_host_id;
  std::string source_qemu_version;
  tunnel::Hello dest_hello;
  std::vector<qmp::BlockNodeInfo> source_nodes;
  std::vector<qmp::BlockJobInfo> source_jobs;
  // PREPARE (check only) result, or the error the destination gave instead.
  std::optional<PrepareResult> dest;
  std::string dest_error;
};

std::vector<CheckResult> evaluate_checks(const CheckInputs& in);

// The size of a source disk, if the node exists.
std::optional<std::uint64_t> source_size(const CheckInputs& in, const std::string& node);

}  // namespace nbdtunnel::engine
