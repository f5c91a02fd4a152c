#pragma once
// The run directory of a `dest --qmp` daemon: the NBD server sockets of its migrations, and the
// state file that records what it created in its destination QEMU (engine/dest_state.hpp). It is
// found again by the next daemon for that QEMU: by default its path comes from the QMP socket's
// canonical path, and an flock on DIR/dest.lock says whether a live daemon holds it. A daemon
// that takes over a dead one's directory gets that one's records (previous()) to clean up.

#include <mutex>
#include <string>

#include "engine/dest_state.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::engine {

// /run/nbdtunnel/.qmp-HASH as root, else ${TMPDIR:-/tmp}/nbdtunnel-dest-HASH, HASH being 16 hex
// digits of the FNV-1a hash of the QMP socket's canonical path (`qmp_canonical`).
std::string default_dest_run_dir(const std::string& qmp_canonical, bool root);
// The canonical form of a QMP socket path (symlinks resolved where the path exists).
std::string canonical_qmp_path(const std::string& qmp_path);

class DestRunDir {
 public:
  DestRunDir() = default;
  DestRunDir(const DestRunDir&) = delete;
  DestRunDir& operator=(const DestRunDir&) = delete;
  // Removes the daemon's files (state, lock, sockets) and the directory if that empties it.
  ~DestRunDir();

  // Creates or takes over `path` (0700, ours, not a symlink) and locks it for the QEMU whose
  // canonical QMP path is `qmp`. Fails, with error filled, when a live daemon holds it.
  bool open(const std::string& path, const std::string& qmp, std::string& error);
  const std::string& path() const { return path_; }
  // What the dead daemon that held this directory had recorded (empty if nothing, or if its
  // file was malformed or for another QEMU: both are logged).
  const DestState& previous() const { return previous_; }

  // Record before creating: migration `id` starts an NBD server on `socket` / adds `export_id`.
  void record_server(const std::string& id, const std::string& socket);
  void record_export(const std::string& id, const std::string& export_id);
  // Migration `id` removed what it created.
  void forget(const std::string& id);

 private:
  void write_locked();

  std::string path_;
  tunnel::unique_fd lock_;
  DestState previous_;
  std::mutex mutex_;  // the daemon's threads share one directory
  DestState state_;
};

}  // namespace nbdtunnel::engine
