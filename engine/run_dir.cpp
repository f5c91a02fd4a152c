#include "engine/run_dir.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "engine/migration_protocol.hpp"

namespace nbdtunnel::engine {

namespace {

// Opens and flocks the directory `path`; an invalid descriptor if that fails or, with `wait`
// false, a live process holds it.
tunnel::unique_fd take_lock(const std::string& path, bool wait) {
  tunnel::unique_fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return fd;
  if (::flock(fd.get(), LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) return tunnel::unique_fd();
  return fd;
}

}  // namespace

std::string runtime_path(const std::string& root_name, const std::string& user_name, bool root) {
  if (root) return fmt::format("{}/{}", kDefaultRunDir, root_name);
  const char* tmp = std::getenv("TMPDIR");
  return fmt::format("{}/{}", tmp && *tmp ? tmp : "/tmp", user_name);
}

std::string hash16(std::string_view s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

std::optional<FileOwner> lookup_user(const std::string& name) {
  passwd pw{};
  passwd* found = nullptr;
  char buf[4096];
  if (::getpwnam_r(name.c_str(), &pw, buf, sizeof buf, &found) != 0 || found == nullptr) {
    return std::nullopt;
  }
  return FileOwner{pw.pw_uid, pw.pw_gid};
}

FileOwner default_qemu_owner() {
  if (::geteuid() != 0) return {};
  return lookup_user("libvirt-qemu").value_or(FileOwner{});
}

RunDir::RunDir(RunDir&& other) noexcept
    : path_(std::exchange(other.path_, {})), owner_(other.owner_), lock_(std::move(other.lock_)) {}

RunDir& RunDir::operator=(RunDir&& other) noexcept {
  if (this != &other) {
    remove();
    path_ = std::exchange(other.path_, {});
    owner_ = other.owner_;
    lock_ = std::move(other.lock_);
  }
  return *this;
}

RunDir::~RunDir() {
  remove();
}

bool RunDir::create(const std::string& base, const std::string& id, FileOwner owner,
                    std::string& error) {
  remove();
  if (::mkdir(base.c_str(), 0755) != 0 && errno != EEXIST) {
    error = fmt::format("cannot create the run directory {}: {}", base, std::strerror(errno));
    return false;
  }
  const std::string path = base + "/" + id;
  const tunnel::unique_fd guard = take_lock(base, true);
  std::error_code ec;
  if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found) {
    const bool dir = std::filesystem::is_directory(std::filesystem::symlink_status(path, ec));
    if (dir && !take_lock(path, false)) {
      error = fmt::format("{} belongs to a migration of that id that is still running", path);
      return false;
    }
    spdlog::warn("removing {}, left by a migration that did not end cleanly", path);
    std::filesystem::remove_all(path, ec);
  }
  if (::mkdir(path.c_str(), 0700) != 0) {
    error = fmt::format("cannot create {}: {}", path, std::strerror(errno));
    return false;
  }
  lock_ = take_lock(path, false);
  if (!lock_) {
    error = fmt::format("cannot lock {}: {}", path, std::strerror(errno));
    std::filesystem::remove_all(path, ec);
    return false;
  }
  path_ = path;
  owner_ = owner;
  if (owner.set() && ::chown(path.c_str(), owner.uid, owner.gid) != 0) {
    error = fmt::format("cannot give {} to uid {}: {}", path, owner.uid, std::strerror(errno));
    remove();
    return false;
  }
  return true;
}

void RunDir::hand_over(const std::string& file) const {
  if (owner_.set() && ::chown(file.c_str(), owner_.uid, owner_.gid) != 0) {
    spdlog::warn("cannot give {} to uid {}: {}", file, owner_.uid, std::strerror(errno));
  }
}

void RunDir::remove() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) spdlog::warn("cannot remove {}: {}", path_, ec.message());
  path_.clear();
  lock_.reset();  // after the removal: no sweep sees the directory unheld
}

std::size_t RunDir::remove_abandoned(const std::string& base) {
  const tunnel::unique_fd guard = take_lock(base, true);
  if (!guard) return 0;  // no run directory yet
  std::size_t removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(base, ec)) {
    const std::string name = entry.path().filename().string();
    // Only migration directories: a dot-name (such as a dest --qmp's .qmp-*) never is one.
    if (!valid_migration_id(name) || entry.is_symlink(ec) || !entry.is_directory(ec)) continue;
    const tunnel::unique_fd held = take_lock(entry.path().string(), false);
    if (!held) continue;  // a live migration's
    std::filesystem::remove_all(entry.path(), ec);
    if (ec) {
      spdlog::warn("cannot remove {}: {}", entry.path().string(), ec.message());
      continue;
    }
    spdlog::warn("removed {}, left by a migration whose process died", entry.path().string());
    ++removed;
  }
  return removed;
}

}  // namespace nbdtunnel::engine
