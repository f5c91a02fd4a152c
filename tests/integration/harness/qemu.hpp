#pragma once

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qmp/blocking_qmp.hpp"
#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::testing {

using json = nlohmann::json;

// A QEMU process (qemu-storage-daemon or qemu-system-x86_64 -machine none) with a QMP monitor
// on dir/<name>.qmp, connected and negotiated. Destruction closes QMP, then kills the process.
class Qemu {
 public:
  // qemu-storage-daemon --chardev socket,...,id=qmp0 --monitor chardev=qmp0 ARGS...; `prefix`
  // comes before the binary (e.g. unshare into another mount namespace; it must exec, not fork).
  static Qemu storage_daemon(const TempDir& dir, const std::string& name,
                             const std::vector<std::string>& args,
                             const std::vector<std::string>& prefix = {});
  // qemu-system-x86_64 -machine none -accel tcg -nodefaults -display none -qmp ... ARGS...
  static Qemu system(const TempDir& dir, const std::string& name,
                     const std::vector<std::string>& args);

  Qemu(Qemu&&) noexcept = default;
  Qemu& operator=(Qemu&&) = delete;
  ~Qemu();

  qmp::BlockingQmp& qmp() { return *qmp_; }
  Process& process() { return *process_; }
  // Sends "quit" and waits (bounded) for a clean exit; returns the exit code.
  std::optional<int> quit();

 private:
  Qemu(const TempDir& dir, const std::string& name, std::vector<std::string> argv,
       const std::string& qmp_path);

  std::unique_ptr<Process> process_;
  std::unique_ptr<qmp::BlockingQmp> qmp_;
};

// blockdev-add of a raw image file as node `node` (file node `node`-file underneath).
void add_raw_file_node(qmp::BlockingQmp& qmp, const std::string& node, const std::string& path);

// blockdev-add driver=nbd over a UNIX socket, i.e. an NBD client node.
void add_nbd_unix_node(qmp::BlockingQmp& qmp, const std::string& node, const std::string& socket,
                       const std::string& export_name);

// blockdev-mirror job_id: device → target, sync=full.
void start_full_mirror(qmp::BlockingQmp& qmp, const std::string& job_id, const std::string& device,
                       const std::string& target);

// Waits for BLOCK_JOB_READY of `job_id`; fails the test (throws) on timeout.
json wait_job_ready(qmp::BlockingQmp& qmp, const std::string& job_id, Seconds timeout);

// block-job-cancel at READY and wait for BLOCK_JOB_COMPLETED, whose event data is returned
// (an "error" member there means the copy failed).
json cancel_ready_job(qmp::BlockingQmp& qmp, const std::string& job_id, Seconds timeout);

}  // namespace nbdtunnel::testing
