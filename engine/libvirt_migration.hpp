#pragma once
// `nbdtunnel migrate --domain`: one libvirt live migration with non-shared disks, everything
// through one channel to `nbdtunnel dest --libvirt`. The memory stream, every disk's NBD
// connection, multifd connections and the libvirt RPC to the destination libvirtd all go through
// UNIX sockets in RUN_DIR/<id>/ (the same path on both hosts), which libvirt is given as
// unix:// URIs. Phases: connect → checks → prepare → mirror → memory → done; cleanup on every
// path (the source keeps running, the destination run directory goes).

#include <string>
#include <vector>

#include "engine/dest_link.hpp"
#include "engine/run_dir.hpp"

namespace nbdtunnel::engine {

struct LibvirtMigrateOptions {
  std::string domain;
  std::string connect_uri = "qemu:///system";  // the source libvirt
  DestLinkOptions link;
  bool p2p = false;  // the source libvirtd drives the migration (VIR_MIGRATE_PEER2PEER)
  std::string run_dir = kDefaultRunDir;
  FileOwner owner;                         // QEMU's user: owner of the run directory and sockets
  double bandwidth_mib = 0;                // 0 = unlimited
  std::vector<std::string> migrate_disks;  // disk targets to copy; empty: every writable disk
  bool shallow = false;                    // VIR_MIGRATE_NON_SHARED_INC
  unsigned parallel = 0;                   // multifd connections; 0 = not parallel
  bool persistent = false;
  bool undefine_source = false;
  bool compressed = false;
  std::string dest_xml;  // the destination domain XML (contents), "" = libvirt's own
  std::string dname;
  bool json = false;
  bool check_only = false;
  bool force = false;
  std::string control_socket;
  std::string migration_id;
};

// Runs the migration in the calling thread; returns an exit code of migration.hpp.
int run_libvirt_migration(LibvirtMigrateOptions options);

}  // namespace nbdtunnel::engine
