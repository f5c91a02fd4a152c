#include "engine/run_dir.hpp"

#include <fmt/format.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

namespace nbdtunnel::engine {

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
    : path_(std::exchange(other.path_, {})), owner_(other.owner_) {}

RunDir& RunDir::operator=(RunDir&& other) noexcept {
  if (this != &other) {
    remove();
    path_ = std::exchange(other.path_, {});
    owner_ = other.owner_;
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
  std::error_code ec;
  if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found) {
    spdlog::warn("removing {}, left by a migration that did not end cleanly", path);
    std::filesystem::remove_all(path, ec);
  }
  if (::mkdir(path.c_str(), 0700) != 0) {
    error = fmt::format("cannot create {}: {}", path, std::strerror(errno));
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
}

}  // namespace nbdtunnel::engine
