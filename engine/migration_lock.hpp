#pragma once
// Which migrations of one source QEMU are alive. Each run holds, for its whole life, an flock on
// PREFIX-<tag>.lock (<tag> as in engine/source_names.hpp), which records its pid and its source
// disks; a process that dies (SIGKILL, a crash) lets go of it at once, so names carrying the tag
// of a lock nobody holds are a dead run's leftovers. A missing file means the same as a file
// nobody holds. STEM.lock, the guard (one per directory), is held while a run takes its own lock
// and removes leftovers, and while it removes lock files: no run sees another between its start
// and its lock, no two remove the same leftover, and no file goes while a run is locking it.
//
// STEM is /run/nbdtunnel/.migrate as root, else ${TMPDIR:-/tmp}/nbdtunnel-migrate (as for the
// dest run directory); PREFIX is STEM-HASH, HASH standing for the source QEMU (source_qemu_key),
// not for a QMP socket: the engines of one QEMU each talk to it on a monitor of their own.

#include <optional>
#include <string>
#include <vector>

#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::engine {

// What stands for a source QEMU: its pid and start time (a pid alone may be reused) when the QMP
// peer's pid is known, else the canonical path of the QMP socket.
std::string source_qemu_key(int qemu_pid, const std::string& qmp_canonical);

// What a live run wrote into its lock file.
struct LockHolder {
  std::string pid;
  std::vector<std::string> disks;  // source node names
};

class MigrationLocks {
 public:
  enum class Take { taken, busy, error };

  // The locks under `stem` (see above) of the source QEMU `qemu_key`.
  MigrationLocks(std::string stem, const std::string& qemu_key);
  // The default STEM.
  static std::string default_stem(bool root);

  // Tries once to take the guard (busy: another run holds it).
  Take try_guard(std::string& error);
  void release_guard() { guard_.reset(); }

  // Under the guard: takes `tag`'s lock for this run and records this pid and `disks` in it.
  // busy: a live run holds it, and `holder` is what it recorded.
  Take take_own(const std::string& tag, const std::vector<std::string>& disks, LockHolder& holder,
                std::string& error);
  // Under the guard: whether a live run holds `tag`'s lock (false for a missing file); nullopt
  // when that cannot be told, with error filled.
  std::optional<bool> held(const std::string& tag, std::string& error) const;
  // Under the guard: removes every lock file (of any source QEMU) that nobody holds, left by
  // dead runs; returns how many.
  std::size_t remove_unheld() const;
  // What the run holding `tag`'s lock recorded; nullopt if there is no such file.
  std::optional<LockHolder> holder(const std::string& tag) const;
  // Under the guard, if `guarded`: removes this run's lock file; then lets go of the lock.
  void release_own(bool guarded);

  std::string path_of(const std::string& tag) const { return prefix_ + "-" + tag + ".lock"; }
  std::string guard_path() const { return stem_ + ".lock"; }

 private:
  std::string stem_;
  std::string prefix_;
  tunnel::unique_fd guard_;
  tunnel::unique_fd own_;
  std::string own_path_;
};

}  // namespace nbdtunnel::engine
