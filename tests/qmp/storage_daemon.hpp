#pragma once

// Starts a real qemu-storage-daemon with a QMP monitor on a UNIX socket, and kills it (bounded
// waits) when destroyed. Its stdout/stderr go to a log file so failures can quote them.

#include <string>
#include <vector>

namespace nbdtunnel::qmp::test {

class StorageDaemon {
 public:
  // The qemu-storage-daemon binary, or "" if it is not installed.
  static std::string find_binary();

  // Runs the daemon with its QMP socket at dir/qmp.sock plus `blockdev_args`; waits (bounded)
  // until the socket exists. Throws std::runtime_error with the daemon's log on failure.
  StorageDaemon(const std::string& dir, const std::vector<std::string>& blockdev_args);
  ~StorageDaemon();
  StorageDaemon(const StorageDaemon&) = delete;
  StorageDaemon& operator=(const StorageDaemon&) = delete;

  const std::string& qmp_socket() const { return qmp_socket_; }
  std::string log() const;
  // SIGTERM, then SIGKILL if it has not exited within the grace period; reaps it.
  void stop();

 private:
  int pid_ = -1;
  std::string qmp_socket_;
  std::string log_path_;
};

// A fresh directory under /tmp (short enough for UNIX socket paths), removed when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace nbdtunnel::qmp::test
