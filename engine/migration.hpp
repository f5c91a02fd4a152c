#pragma once
// `nbdtunnel migrate`: one non-shared-disk storage migration, end to end, over QMP.
// Phases follow libvirt's migration protocol: checks (begin) → prepare (destination exports the
// disks) → mirror (perform) → complete or stay in sync (finish) → FINISH at the destination
// (confirm). The first error wins; cleanup errors are logged, never reported instead of it.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/migration_checks.hpp"
#include "tunnel/channel.hpp"
#include "tunnel/endpoint.hpp"
#include "tunnel/tls_context.hpp"

namespace nbdtunnel::engine {

struct MigrateOptions {
  std::string source_qmp;
  tunnel::Endpoint dest;
  std::vector<DiskSpec> disks;
  double bandwidth_mib = 0;  // total over all disks, MiB/s; 0 = unlimited
  bool shallow = false;      // sync=top
  bool finish_sync = false;  // stay synchronised after READY until told to finish
  bool json = false;
  bool check_only = false;
  bool force = false;
  std::string control_socket;
  std::string migration_id;
  std::chrono::milliseconds connect_timeout{10'000};
  tunnel::ChannelConfig channel;
  std::shared_ptr<tunnel::TlsContext> tls;  // none: a plain channel
  std::string tls_verify_host;              // the name the server certificate must carry
};

// Exit codes of `nbdtunnel migrate`.
inline constexpr int kMigrateDone = 0;
inline constexpr int kMigrateFailed = 1;
inline constexpr int kMigrateUsage = 2;
inline constexpr int kMigrateChecksFailed = 3;
inline constexpr int kMigrateCancelled = 130;

// A fresh migration id: valid_migration_id() holds for it.
std::string new_migration_id();

// Runs the migration in the calling thread; returns the exit code.
int run_migration(MigrateOptions options);

}  // namespace nbdtunnel::engine
