#include "engine/migration_lock.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/run_dir.hpp"

namespace nbdtunnel::engine {

namespace {

// Field 22 of /proc/PID/stat, the start time in clock ticks since boot; "" if unreadable.
std::string start_time(int pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat;
  std::getline(in, stat);
  const std::size_t paren = stat.rfind(')');  // the command name may hold spaces and ')'
  if (paren == std::string::npos) return "";
  std::istringstream fields(stat.substr(paren + 1));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) return field;
  }
  return "";
}

LockHolder parse_holder(const std::string& text) {
  LockHolder h;
  std::istringstream in(text);
  std::getline(in, h.pid);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) h.disks.push_back(line);
  }
  return h;
}

}  // namespace

std::string source_qemu_key(int qemu_pid, const std::string& qmp_canonical) {
  if (qemu_pid <= 0) return "qmp " + qmp_canonical;
  return fmt::format("qemu pid {} started {}", qemu_pid, start_time(qemu_pid));
}

MigrationLocks::MigrationLocks(std::string stem, const std::string& qemu_key)
    : stem_(std::move(stem)), prefix_(stem_ + "-" + hash16(qemu_key)) {}

std::string MigrationLocks::default_stem(bool root) {
  if (root) ::mkdir(kDefaultRunDir, 0755);  // EEXIST is the usual case; others show on open
  return runtime_path(".migrate", "nbdtunnel-migrate", root);
}

MigrationLocks::Take MigrationLocks::try_guard(std::string& error) {
  if (guard_) return Take::taken;
  const std::string path = guard_path();
  tunnel::unique_fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) {
    error = fmt::format("cannot open {}: {}", path, std::strerror(errno));
    return Take::error;
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return Take::busy;
    error = fmt::format("cannot lock {}: {}", path, std::strerror(errno));
    return Take::error;
  }
  guard_ = std::move(fd);
  return Take::taken;
}

MigrationLocks::Take MigrationLocks::take_own(const std::string& tag,
                                              const std::vector<std::string>& disks,
                                              LockHolder& holder, std::string& error) {
  const std::string path = path_of(tag);
  tunnel::unique_fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) {
    error = fmt::format("cannot open {}: {}", path, std::strerror(errno));
    return Take::error;
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) {
      error = fmt::format("cannot lock {}: {}", path, std::strerror(errno));
      return Take::error;
    }
    holder = this->holder(tag).value_or(LockHolder{});
    return Take::busy;
  }
  std::string text = fmt::format("{}\n", ::getpid());
  for (const std::string& d : disks) text += d + "\n";
  if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), text.data(), text.size(), 0) < 0) {
    spdlog::warn("cannot write this run's pid into {}: {}", path, std::strerror(errno));
  }
  own_ = std::move(fd);
  own_path_ = path;
  return Take::taken;
}

std::optional<bool> MigrationLocks::held(const std::string& tag, std::string& error) const {
  const std::string path = path_of(tag);
  tunnel::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) {
    if (errno == ENOENT) return false;
    error = fmt::format("cannot open {}: {}", path, std::strerror(errno));
    return std::nullopt;
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return false;  // let go as fd closes
  if (errno == EWOULDBLOCK) return true;
  error = fmt::format("cannot lock {}: {}", path, std::strerror(errno));
  return std::nullopt;
}

std::size_t MigrationLocks::remove_unheld() const {
  const std::filesystem::path stem(stem_);
  const std::string start = stem.filename().string() + "-";
  std::size_t removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(stem.parent_path(), ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(start) || !name.ends_with(".lock") || entry.is_symlink(ec) ||
        !entry.is_regular_file(ec)) {
      continue;
    }
    tunnel::unique_fd fd(::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;  // a live run's
    if (::unlink(entry.path().c_str()) == 0) ++removed;
  }
  return removed;
}

std::optional<LockHolder> MigrationLocks::holder(const std::string& tag) const {
  std::ifstream in(path_of(tag));
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return parse_holder(text.str());
}

void MigrationLocks::release_own(bool guarded) {
  if (!own_) return;
  if (guarded) ::unlink(own_path_.c_str());
  own_.reset();  // after the unlink: no one locks a file about to go
  own_path_.clear();
}

}  // namespace nbdtunnel::engine
