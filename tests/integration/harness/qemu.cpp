#include "tests/integration/harness/qemu.hpp"

#include <sys/stat.h>

#include <stdexcept>
#include <thread>

#include "tests/integration/harness/nbd_servers.hpp"

namespace nbdtunnel::testing {
namespace {

constexpr Seconds kStartTimeout{15};

std::chrono::milliseconds to_millis(Seconds s) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(s);
}

}  // namespace

Qemu::Qemu(const TempDir& dir, const std::string& name, std::vector<std::string> argv,
           const std::string& qmp_path)
    : process_(std::make_unique<Process>(name, std::move(argv), dir.file(name + ".log"))) {
  if (!wait_for_unix_listener(qmp_path, kStartTimeout)) {
    process_->dump_log();
    throw std::runtime_error(name + ": no QMP socket at " + qmp_path + " within 15 s");
  }
  try {
    qmp_ = std::make_unique<qmp::BlockingQmp>(qmp_path);
  } catch (...) {
    process_->dump_log();
    throw;
  }
}

Qemu::~Qemu() {
  qmp_.reset();
  process_.reset();
}

Qemu Qemu::storage_daemon(const TempDir& dir, const std::string& name,
                          const std::vector<std::string>& args,
                          const std::vector<std::string>& prefix) {
  const std::string qmp_path = dir.file(name + ".qmp");
  std::vector<std::string> argv = prefix;
  for (std::string a : {std::string("qemu-storage-daemon"), std::string("--chardev"),
                        "socket,path=" + qmp_path + ",server=on,wait=off,id=qmp0",
                        std::string("--monitor"), std::string("chardev=qmp0")}) {
    argv.push_back(std::move(a));
  }
  argv.insert(argv.end(), args.begin(), args.end());
  return Qemu(dir, name, std::move(argv), qmp_path);
}

Qemu Qemu::system(const TempDir& dir, const std::string& name,
                  const std::vector<std::string>& args) {
  const std::string qmp_path = dir.file(name + ".qmp");
  std::vector<std::string> argv{"qemu-system-x86_64",
                                "-machine",
                                "none",
                                "-accel",
                                "tcg",
                                "-nodefaults",
                                "-display",
                                "none",
                                "-qmp",
                                "unix:" + qmp_path + ",server=on,wait=off"};
  argv.insert(argv.end(), args.begin(), args.end());
  return Qemu(dir, name, std::move(argv), qmp_path);
}

std::optional<int> Qemu::quit() {
  try {
    qmp_->execute("quit", json::object());
  } catch (const std::exception&) {
    // QEMU may close the monitor before the reply is read; the exit code below is what counts.
  }
  qmp_.reset();
  return process_->wait_exit(Seconds(15));
}

void add_raw_file_node(qmp::BlockingQmp& qmp, const std::string& node, const std::string& path) {
  qmp.execute(
      "blockdev-add",
      {{"driver", "raw"}, {"node-name", node}, {"file", {{"driver", "file"}, {"filename", path}}}});
}

void add_nbd_unix_node(qmp::BlockingQmp& qmp, const std::string& node, const std::string& socket,
                       const std::string& export_name) {
  qmp.execute("blockdev-add", {{"driver", "nbd"},
                               {"node-name", node},
                               {"server", {{"type", "unix"}, {"path", socket}}},
                               {"export", export_name}});
}

void start_full_mirror(qmp::BlockingQmp& qmp, const std::string& job_id, const std::string& device,
                       const std::string& target) {
  qmp.execute("blockdev-mirror",
              {{"job-id", job_id}, {"device", device}, {"target", target}, {"sync", "full"}});
}

json wait_job_ready(qmp::BlockingQmp& qmp, const std::string& job_id, Seconds timeout) {
  return qmp.wait_event(
      "BLOCK_JOB_READY",
      [job_id](const json& ev) {
        return ev.value("data", json::object()).value("device", "") == job_id;
      },
      to_millis(timeout));
}

json cancel_ready_job(qmp::BlockingQmp& qmp, const std::string& job_id, Seconds timeout) {
  qmp.execute("block-job-cancel", {{"device", job_id}});
  json ev = qmp.wait_event(
      "BLOCK_JOB_COMPLETED",
      [job_id](const json& e) {
        return e.value("data", json::object()).value("device", "") == job_id;
      },
      to_millis(timeout));
  return ev.value("data", json::object());
}

}  // namespace nbdtunnel::testing
