#pragma once
// A migration's rendezvous directory, RUN_DIR/<id>/: the UNIX sockets libvirt names in a
// migration's URIs live there, at the same path on both hosts. Created for one migration and
// removed, with whatever QEMU left in it, when the migration ends however it ends.
//
// Who holds a directory: its creator keeps an flock on the directory RUN_DIR/<id> itself for
// the migration's life, so a process that dies (SIGKILL, a crash) lets go of it at once.
// Creating and sweeping hold an flock on RUN_DIR meanwhile, so no sweep sees a directory between
// mkdir and its lock. No lock file: RUN_DIR holds nothing but migration directories.

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::engine {

inline constexpr const char* kDefaultRunDir = "/run/nbdtunnel";

// Where a daemon or engine keeps a file or directory of its own that another process must find
// again: kDefaultRunDir/ROOT_NAME as root, else ${TMPDIR:-/tmp}/USER_NAME. ROOT_NAME is a dot-name,
// so RunDir::remove_abandoned never takes it for a migration directory.
std::string runtime_path(const std::string& root_name, const std::string& user_name, bool root);
// 16 hex digits of the FNV-1a hash of `s`: a fixed-length, file-name-safe stand-in for a path.
std::string hash16(std::string_view s);

// Who owns a run directory and the sockets in it: the user QEMU runs as, so that it can create
// (destination) and connect to (source) the sockets.
struct FileOwner {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  bool set() const { return uid != static_cast<uid_t>(-1); }
};
// The user and primary group of `name`, if it exists.
std::optional<FileOwner> lookup_user(const std::string& name);
// libvirt's QEMU user on Debian, `libvirt-qemu`, where it exists and this process is root;
// otherwise none (files stay owned by this process).
FileOwner default_qemu_owner();

class RunDir {
 public:
  RunDir() = default;
  RunDir(const RunDir&) = delete;
  RunDir& operator=(const RunDir&) = delete;
  RunDir(RunDir&& other) noexcept;
  RunDir& operator=(RunDir&& other) noexcept;
  ~RunDir();
  // Creates `base` (0755) if absent and base/<id> (0700, owned by `owner` if set), and holds it,
  // replacing a directory of that name a dead run left; one a live process holds is refused.
  // False with error filled on failure.
  bool create(const std::string& base, const std::string& id, FileOwner owner, std::string& error);
  const std::string& path() const { return path_; }
  std::string socket(const std::string& name) const { return path_ + "/" + name + ".sock"; }
  // Gives `file` (a socket created in it) to the directory's owner.
  void hand_over(const std::string& file) const;
  // Removes the directory and everything in it; idempotent.
  void remove();
  // Removes every base/<id>/ no live process holds (left by a killed run); returns how many.
  static std::size_t remove_abandoned(const std::string& base);

 private:
  std::string path_;
  FileOwner owner_;
  tunnel::unique_fd lock_;
};

}  // namespace nbdtunnel::engine
