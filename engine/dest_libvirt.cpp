#include "engine/dest_libvirt.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>

#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::engine {

namespace {

constexpr std::string_view kTargetPrefix = "migration/";
constexpr std::array<std::string_view, 2> kSockets = {"memory", "nbd"};

std::uint64_t be64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

DestDiskReport inspect_image(const std::string& path) {
  DestDiskReport r;
  r.node = path;
  struct stat st {};
  if (path.empty() || path.front() != '/' || ::stat(path.c_str(), &st) != 0) return r;
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) return r;
  r.exists = true;
  r.writable = ::access(path.c_str(), W_OK) == 0;
  tunnel::unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return r;
  if (S_ISBLK(st.st_mode)) {
    std::uint64_t bytes = 0;
    if (::ioctl(fd.get(), BLKGETSIZE64, &bytes) == 0) r.size = bytes;
  } else {
    r.size = static_cast<std::uint64_t>(st.st_size);
  }
  // A qcow2 image is as large as its header says, whatever the file's length.
  unsigned char header[32];
  if (::pread(fd.get(), header, sizeof header, 0) == static_cast<ssize_t>(sizeof header) &&
      header[0] == 'Q' && header[1] == 'F' && header[2] == 'I' && header[3] == 0xfb) {
    r.size = be64(header + 24);
  }
  return r;
}

std::string default_libvirt_socket() {
  constexpr const char* kModular = "/run/libvirt/virtqemud-sock";
  struct stat st {};
  if (::stat(kModular, &st) == 0 && S_ISSOCK(st.st_mode)) return kModular;
  return "/run/libvirt/libvirt-sock";
}

DestLibvirt::DestLibvirt(DestLibvirtOptions options) : o_(std::move(options)) {}

DestLibvirt::~DestLibvirt() {
  shutdown();
}

void DestLibvirt::on_call(tunnel::Channel& channel, const tunnel::PacketHeader& call,
                          std::span<const std::uint8_t> body) {
  if (!o_.enabled) {
    channel.reply_error(call, tunnel::ErrorCode::unsupported,
                        "this destination daemon was started without --libvirt, so it cannot "
                        "take part in libvirt migrations");
    return;
  }
  if (call.procedure == procedure_number(MigrationProc::libvirt_prepare)) {
    prepare(channel, call, body);
  } else {
    finish(channel, call, body);
  }
}

void DestLibvirt::prepare(tunnel::Channel& channel, const tunnel::PacketHeader& call,
                          std::span<const std::uint8_t> body) {
  tunnel::Result<Prepare> decoded = decode_prepare(body);
  if (!decoded) {
    channel.reply_error(call, tunnel::ErrorCode::protocol, decoded.error().message);
    return;
  }
  const Prepare& req = *decoded;
  const bool check_only = (req.flags & kPrepareCheckOnly) != 0;
  PrepareResult result;
  std::string problems;
  for (const PrepareDisk& d : req.disks) {
    DestDiskReport r = inspect_image(d.node);
    if (!r.exists) {
      problems += fmt::format("; {} does not exist", d.node);
    } else if (r.size < d.size) {
      problems += fmt::format("; {} has {} bytes, the source disk {}", d.node, r.size, d.size);
    } else if (!r.writable) {
      problems += fmt::format("; {} is not writable", d.node);
    }
    result.disks.push_back(std::move(r));
  }
  if (!check_only) {
    auto refuse = [&](tunnel::ErrorCode code, const std::string& why) {
      spdlog::warn("LIBVIRT_PREPARE refused: {}", why);
      channel.reply_error(call, code, why);
    };
    if (!problems.empty())
      return refuse(tunnel::ErrorCode::protocol, "destination disks are not usable" + problems);
    if (migrations_.count(req.migration_id) != 0) {
      return refuse(tunnel::ErrorCode::limit, "a migration of that id is already prepared");
    }
    if (migrations_.size() >= kMaxLibvirtMigrations) {
      return refuse(
          tunnel::ErrorCode::limit,
          fmt::format("{} migrations are already prepared here, the limit", kMaxLibvirtMigrations));
    }
    Prepared p;
    p.owner = &channel;
    std::string error;
    if (!p.dir.create(o_.run_dir, req.migration_id, o_.owner, error)) {
      return refuse(tunnel::ErrorCode::target_unavailable, error);
    }
    spdlog::info("migration '{}': run directory {} ready for {} disk(s)", req.migration_id,
                 p.dir.path(), req.disks.size());
    migrations_.emplace(req.migration_id, std::move(p));
    result.target = std::string(kTargetPrefix) + req.migration_id + "/";
  }
  std::vector<std::uint8_t> out;
  encode_prepare_result(out, result);
  channel.reply(call, out);
}

void DestLibvirt::finish(tunnel::Channel& channel, const tunnel::PacketHeader& call,
                         std::span<const std::uint8_t> body) {
  tunnel::Result<Finish> decoded = decode_finish(body);
  if (!decoded) {
    channel.reply_error(call, tunnel::ErrorCode::protocol, decoded.error().message);
    return;
  }
  auto it = migrations_.find(decoded->migration_id);
  if (it == migrations_.end() || it->second.owner != &channel) {
    channel.reply_error(
        call, tunnel::ErrorCode::protocol,
        fmt::format("no migration '{}' was prepared on this channel", decoded->migration_id));
    return;
  }
  spdlog::info("migration '{}': removing its run directory ({})", it->first,
               (decoded->flags & kFinishAbort) != 0 ? "aborted by the source" : "finished");
  migrations_.erase(it);
  channel.reply(call);
}

std::optional<std::string> DestLibvirt::resolve(const tunnel::Channel& channel,
                                                const std::string& target) const {
  if (!o_.enabled) return std::nullopt;
  if (target == "libvirt") return o_.libvirt_socket;
  if (target.rfind(kTargetPrefix, 0) != 0) return std::nullopt;
  const std::string rest = target.substr(kTargetPrefix.size());
  const auto slash = rest.find('/');
  if (slash == std::string::npos) return std::nullopt;
  auto it = migrations_.find(rest.substr(0, slash));
  if (it == migrations_.end() || it->second.owner != &channel) return std::nullopt;
  const std::string name = rest.substr(slash + 1);
  for (std::string_view s : kSockets) {
    if (name == s) return it->second.dir.socket(name);
  }
  return std::nullopt;
}

void DestLibvirt::channel_closed(tunnel::Channel& channel) {
  for (auto it = migrations_.begin(); it != migrations_.end();) {
    if (it->second.owner == &channel) {
      spdlog::info("migration '{}': removing its run directory (its channel closed)", it->first);
      it = migrations_.erase(it);
    } else {
      ++it;
    }
  }
}

void DestLibvirt::shutdown() {
  migrations_.clear();
}

std::vector<std::string> DestLibvirt::owned_by(const tunnel::Channel& channel) const {
  std::vector<std::string> ids;
  for (const auto& [id, m] : migrations_) {
    if (m.owner == &channel) ids.push_back(id);
  }
  return ids;
}

}  // namespace nbdtunnel::engine
