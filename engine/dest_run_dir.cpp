#include "engine/dest_run_dir.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "engine/run_dir.hpp"

namespace nbdtunnel::engine {

namespace {

constexpr const char* kLockFile = "dest.lock";
constexpr const char* kStateFile = "dest.state";

// Reads at most `limit` + 1 bytes of a regular file; nullopt if there is none.
std::optional<std::string> read_small_file(const std::string& path, std::size_t limit) {
  tunnel::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return std::nullopt;
  std::string out;
  char buf[4096];
  while (out.size() <= limit) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

// The NBD server sockets of migrations (nbd-<id>.sock) left in `dir`.
void remove_sockets(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("nbd-", 0) == 0 && name.size() > 9 && name.ends_with(".sock")) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
}

}  // namespace

std::string canonical_qmp_path(const std::string& qmp_path) {
  std::error_code ec;
  std::filesystem::path p =
      std::filesystem::weakly_canonical(std::filesystem::absolute(qmp_path, ec), ec);
  if (ec) return std::filesystem::absolute(qmp_path).lexically_normal().string();
  return p.string();
}

std::string default_dest_run_dir(const std::string& qmp_canonical, bool root) {
  const std::string hash = hash16(qmp_canonical);
  return runtime_path(".qmp-" + hash, "nbdtunnel-dest-" + hash, root);
}

bool DestRunDir::open(const std::string& path, const std::string& qmp, std::string& error) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  if (!parent.empty() && parent == kDefaultRunDir) ::mkdir(parent.c_str(), 0755);
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    error = fmt::format("cannot create the run directory {}: {}", path, std::strerror(errno));
    return false;
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) {
    error = fmt::format(
        "the run directory {} is not a directory owned by this user (uid {}): remove it or give "
        "--run-dir",
        path, ::geteuid());
    return false;
  }
  const std::string lock_path = path + "/" + kLockFile;
  tunnel::unique_fd lock(
      ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock) {
    error = fmt::format("cannot open {}: {}", lock_path, std::strerror(errno));
    return false;
  }
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK) {
      error = fmt::format("cannot lock {}: {}", lock_path, std::strerror(err));
      return false;
    }
    std::string holder = read_small_file(lock_path, 32).value_or("");
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    error = fmt::format(
        "another nbdtunnel dest{} already serves the destination QEMU at {} (it holds {}): one "
        "daemon per QEMU; stop that one first",
        holder.empty() ? "" : " (pid " + holder + ")", qmp, path);
    return false;
  }
  const std::string pid = fmt::format("{}\n", ::getpid());
  if (::ftruncate(lock.get(), 0) != 0 || ::pwrite(lock.get(), pid.data(), pid.size(), 0) < 0) {
    spdlog::warn("cannot write this daemon's pid into {}: {}", lock_path, std::strerror(errno));
  }
  path_ = path;
  lock_ = std::move(lock);

  const std::string state_path = path + "/" + kStateFile;
  if (auto text = read_small_file(state_path, kMaxDestStateBytes)) {
    tunnel::Result<DestState> parsed = parse_dest_state(*text);
    if (!parsed) {
      spdlog::warn("ignoring the malformed state file {}: {}", state_path, parsed.error().message);
    } else if (!parsed->empty() && parsed->qmp != qmp) {
      spdlog::warn("ignoring the state file {}: it is for the QEMU at {}, not {}", state_path,
                   parsed->qmp, qmp);
    } else {
      previous_ = std::move(*parsed);
    }
  }
  if (!previous_.empty()) {
    spdlog::info("taking over {} from a daemon that did not stop cleanly", path);
  }
  remove_sockets(path);
  std::lock_guard<std::mutex> guard(mutex_);
  // The dead daemon's records stay until they are cleaned: a crash during the cleanup loses
  // nothing.
  state_ = previous_;
  state_.qmp = qmp;
  write_locked();
  return true;
}

DestRunDir::~DestRunDir() {
  if (path_.empty()) return;
  std::error_code ec;
  remove_sockets(path_);
  if (!state_.empty()) {
    spdlog::warn("{} keeps the records of what could not be removed, for the next daemon", path_);
    return;  // the lock goes with the descriptor
  }
  std::filesystem::remove(path_ + "/" + kStateFile, ec);
  std::filesystem::remove(path_ + "/" + kStateFile + ".new", ec);
  std::filesystem::remove(path_ + "/" + kLockFile, ec);
  ::rmdir(path_.c_str());  // not empty: someone else's files, or a new daemon's lock
}

void DestRunDir::record_server(const std::string& id, const std::string& socket) {
  std::lock_guard<std::mutex> guard(mutex_);
  for (DestRecord& r : state_.migrations) {
    if (r.migration_id == id) {
      r.server_socket = socket;
      write_locked();
      return;
    }
  }
  state_.migrations.push_back(DestRecord{id, socket, {}});
  write_locked();
}

void DestRunDir::record_export(const std::string& id, const std::string& export_id) {
  std::lock_guard<std::mutex> guard(mutex_);
  for (DestRecord& r : state_.migrations) {
    if (r.migration_id == id) {
      r.exports.push_back(export_id);
      write_locked();
      return;
    }
  }
  state_.migrations.push_back(DestRecord{id, {}, {export_id}});
  write_locked();
}

void DestRunDir::forget(const std::string& id) {
  std::lock_guard<std::mutex> guard(mutex_);
  std::erase_if(state_.migrations, [&](const DestRecord& r) { return r.migration_id == id; });
  write_locked();
}

// Replaces the state file at once (write a new file, rename it over the old one).
void DestRunDir::write_locked() {
  if (path_.empty()) return;
  const std::string text = encode_dest_state(state_);
  const std::string final_path = path_ + "/" + kStateFile;
  const std::string tmp_path = final_path + ".new";
  tunnel::unique_fd fd(
      ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  bool ok = static_cast<bool>(fd) &&
            ::write(fd.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size());
  fd.reset();
  ok = ok && ::rename(tmp_path.c_str(), final_path.c_str()) == 0;
  if (!ok) {
    spdlog::warn(
        "cannot write {}: {} (a daemon started after a crash of this one will not know "
        "what to remove)",
        final_path, std::strerror(errno));
  }
}

}  // namespace nbdtunnel::engine
