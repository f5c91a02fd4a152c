#pragma once
// The destination's side of `nbdtunnel migrate --domain` (`dest --libvirt`). LIBVIRT_PREPARE
// reports on the destination disk images and creates the migration's run directory RUN_DIR/<id>/,
// where the destination QEMU that libvirt starts creates its migration and NBD sockets;
// LIBVIRT_FINISH (or the channel closing) removes it. Streams reach only:
//   "libvirt"              the destination libvirt daemon's socket;
//   "migration/<id>/<s>"   RUN_DIR/<id>/<s>.sock, s ∈ {memory, nbd}, for the channel that
//                          prepared <id> and no other.

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/migration_protocol.hpp"
#include "engine/run_dir.hpp"
#include "tunnel/channel.hpp"

namespace nbdtunnel::engine {

// Migrations prepared at once on one daemon thread.
inline constexpr std::size_t kMaxLibvirtMigrations = 16;

struct DestLibvirtOptions {
  bool enabled = false;
  std::string libvirt_socket;  // the destination libvirtd's socket
  std::string run_dir = kDefaultRunDir;
  FileOwner owner;  // QEMU's user, owner of each migration's directory
};

// What a destination image holds: whether it exists, its virtual size (qcow2's header, else the
// file or device size) and whether it is writable.
DestDiskReport inspect_image(const std::string& path);

// The socket libvirt clients use for qemu:///system on this host: the modular daemon's where it
// runs, else the monolithic one's.
std::string default_libvirt_socket();

class DestLibvirt {
 public:
  explicit DestLibvirt(DestLibvirtOptions options);
  ~DestLibvirt();
  static bool serves(std::uint32_t procedure) {
    return procedure == procedure_number(MigrationProc::libvirt_prepare) ||
           procedure == procedure_number(MigrationProc::libvirt_finish);
  }
  void on_call(tunnel::Channel& channel, const tunnel::PacketHeader& call,
               std::span<const std::uint8_t> body);
  std::optional<std::string> resolve(const tunnel::Channel& channel,
                                     const std::string& target) const;
  void channel_closed(tunnel::Channel& channel);
  void shutdown();
  // The ids of the migrations a channel prepared, for `nbdtunnel status`.
  std::vector<std::string> owned_by(const tunnel::Channel& channel) const;

 private:
  struct Prepared {
    const tunnel::Channel* owner = nullptr;
    RunDir dir;
  };
  void prepare(tunnel::Channel& channel, const tunnel::PacketHeader& call,
               std::span<const std::uint8_t> body);
  void finish(tunnel::Channel& channel, const tunnel::PacketHeader& call,
              std::span<const std::uint8_t> body);

  DestLibvirtOptions o_;
  std::map<std::string, Prepared> migrations_;
};

}  // namespace nbdtunnel::engine
