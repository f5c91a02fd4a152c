#pragma once
// Helpers for the `nbdtunnel migrate` tests: QEMUs with a second QMP monitor for nbdtunnel,
// the destination daemon with --qmp, a migrate run whose stdout (--json) is kept apart from its
// stderr, a client for the control socket, and "both hosts are clean" assertions.

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/qemu.hpp"
#include "tests/integration/harness/require_tools.hpp"
#include "tests/integration/harness/sockets.hpp"
#include "tests/integration/harness/temp_dir.hpp"
#include "tests/integration/harness/tunnel.hpp"

namespace nbdtunnel::testing {

// The host id the destination daemons claim: anything but this machine's /etc/machine-id.
inline constexpr const char* kDestHostId = "nbdtunnel-test-destination-host";

// A QEMU whose first monitor belongs to the test (qemu()) and whose second monitor, at
// tool_qmp, belongs to nbdtunnel: a QMP socket serves one client at a time.
struct QemuHost {
  Qemu qemu;
  std::string tool_qmp;
  qmp::BlockingQmp& qmp() { return qemu.qmp(); }
};

// qemu-storage-daemon with `args` and a second monitor; `prefix` as for Qemu::storage_daemon.
QemuHost start_storage_host(const TempDir& dir, const std::string& name,
                            std::vector<std::string> args,
                            const std::vector<std::string>& prefix = {});
// qemu-system-x86_64 -machine none with `args` and a second monitor.
QemuHost start_vm_host(const TempDir& dir, const std::string& name, std::vector<std::string> args);

// --blockdev options for a raw image `path` as node `node` (file node `node`-file).
std::vector<std::string> raw_disk_args(const std::string& node, const std::string& path,
                                       bool read_only = false);
// --blockdev options for a qcow2 image `path` (its backing chain opened from the header).
std::vector<std::string> qcow2_disk_args(const std::string& node, const std::string& path);

// The usual pair: qemu-storage-daemons "qsd-src" and "qsd-dst", each with node disk0 on a raw
// image of `size` in dir (src0.raw random from `seed`, dst0.raw zeros; src0.orig a copy of
// src0.raw, to show later that the source was not touched).
struct StorageHosts {
  QemuHost src;
  QemuHost dst;
};
StorageHosts start_storage_hosts(const TempDir& dir, std::uint64_t size, std::uint64_t seed);

// `nbdtunnel dest --listen 127.0.0.1:0 --qmp HOST.tool_qmp [--host-id ID]`; an empty host_id
// leaves the default (this machine's id). Its run directory is HOST.tool_qmp + ".run" (inside
// `dir`, so that a daemon killed at the end of a test leaves nothing elsewhere), unless
// `default_run_dir`: then the daemon picks its own (with TMPDIR = dir).
TunnelDest start_migration_dest(const TempDir& dir, const QemuHost& host,
                                const std::string& host_id = kDestHostId,
                                const std::string& name = "dest",
                                const std::vector<std::string>& extra_args = {},
                                bool default_run_dir = false);

// One `nbdtunnel migrate` run. stdout goes to dir/<name>.out (the Process log), stderr to
// dir/<name>.err, so that --json output can be checked line by line. `prefix` comes before the
// binary (e.g. nsenter into another mount namespace; it must exec, not fork).
class MigrateRun {
 public:
  MigrateRun(const TempDir& dir, const std::string& name, const std::vector<std::string>& args,
             const std::vector<std::string>& prefix = {});
  ~MigrateRun();
  MigrateRun(const MigrateRun&) = delete;
  MigrateRun& operator=(const MigrateRun&) = delete;

  Process& process() { return *process_; }
  std::optional<int> wait_exit(Seconds timeout) { return process_->wait_exit(timeout); }
  // Every complete stdout line parsed; a line that is not JSON fails the test.
  std::vector<json> events() const;
  // Waits for an event matching `match`; nullopt at the timeout or when the run has exited
  // without printing one.
  std::optional<json> wait_event(const std::function<bool(const json&)>& match, Seconds timeout);
  std::string stdout_text() const { return process_->log(); }
  std::string stderr_text() const;
  // Prints stdout and stderr to the test's stderr.
  void dump() const;

 private:
  std::string err_path_;
  std::unique_ptr<Process> process_;
};

// Runs migrate to its end (bounded: the binary is aborted beyond `timeout`).
struct MigrateResult {
  int exit_code = -1;
  std::vector<json> events;
  std::string stderr_text;
};
MigrateResult run_migrate(const TempDir& dir, const std::string& name,
                          const std::vector<std::string>& args, Seconds timeout = Seconds(60),
                          const std::vector<std::string>& prefix = {});

// migrate arguments up to the disks: --source-qmp SRC --dest 127.0.0.1:PORT --disk D...
std::vector<std::string> migrate_args(const QemuHost& source, int dest_port,
                                      const std::vector<std::string>& disks,
                                      const std::vector<std::string>& extra = {});

// Event helpers over parsed --json output.
std::vector<json> events_named(const std::vector<json>& events, const std::string& name);
std::vector<std::string> phases(const std::vector<json>& events);
std::optional<json> summary(const std::vector<json>& events);
std::optional<json> check_named(const std::vector<json>& events, const std::string& check);
// The verdict of one check ("pass", "warn", "fail"), or "absent".
std::string verdict_of(const std::vector<json>& events, const std::string& check);
// Every event, one per line, for failure messages.
std::string describe(const std::vector<json>& events);

// A client of migrate's control socket (QMP-style JSON lines).
class ControlClient {
 public:
  // Connects (retrying until the socket is there) and reads the greeting.
  ControlClient(const std::string& path, Seconds timeout);
  const json& greeting() const { return greeting_; }
  // Sends one command and returns the whole reply ({"return":...} or {"error":...}).
  json execute(const std::string& command, const json& arguments = json::object());

 private:
  json read_line(Seconds timeout);
  std::optional<RawSocket> socket_;
  json greeting_;
};

// No block job and no node named nbdtunnel-* in this QEMU.
::testing::AssertionResult source_is_clean(qmp::BlockingQmp& qmp);
// No block export in this QEMU.
::testing::AssertionResult has_no_export(qmp::BlockingQmp& qmp);

// A TCP port on 127.0.0.1 where nothing listens (bound, then closed).
int closed_local_port();

}  // namespace nbdtunnel::testing
