#pragma once
// The destination's side of `nbdtunnel migrate`: PREPARE checks the destination QEMU's nodes and
// exports them through an NBD server on a private UNIX socket; FINISH (or an abort, or the
// channel dying) removes exactly what PREPARE created. A migration belongs to the channel that
// prepared it: only that channel may open its streams or finish it, and no other peer learns
// its id.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/dest_run_dir.hpp"
#include "qmp/qmp_client.hpp"
#include "tunnel/channel.hpp"

namespace nbdtunnel::engine {

// Removes one block export, dropping its clients, and waits until QEMU says it is gone.
boost::asio::awaitable<void> remove_block_export(qmp::QmpClient& q, const std::string& id);

class DestMigrations {
 public:
  // qmp_path: the destination QEMU's QMP socket ("" = PREPARE is refused).
  // run_dir: the daemon's directory for the NBD server sockets and the record of what it
  // creates in the QEMU (null with no --qmp).
  DestMigrations(boost::asio::io_context& io, std::string qmp_path,
                 std::shared_ptr<DestRunDir> run_dir);
  ~DestMigrations();

  // Serves a call the channel forwarded: PREPARE, FINISH, and ERROR (unsupported) to any other.
  void on_call(tunnel::Channel& channel, const tunnel::PacketHeader& call,
               std::span<const std::uint8_t> body);
  // The socket for an OPEN_TUNNEL target "migration/<id>", if that migration was prepared over
  // this channel: no other channel may open its streams.
  std::optional<std::string> resolve(const tunnel::Channel& channel,
                                     const std::string& target) const;
  // Aborts the migrations prepared over a channel that has closed.
  void channel_closed(tunnel::Channel& channel);
  // Aborts every migration; done runs when all cleanup has finished.
  void shutdown(std::function<void()> done);
  bool idle() const { return migrations_.empty() && busy_ == 0; }
  // The ids of the migrations a channel prepared, for `nbdtunnel status`.
  std::vector<std::string> owned_by(const tunnel::Channel& channel) const;

 private:
  // What PREPARE created for one migration, so that FINISH removes exactly that.
  struct PreparedMigration {
    std::string id;
    const tunnel::Channel* owner = nullptr;
    std::string socket;
    std::vector<std::string> export_ids;
    bool server_started = false;
    int qemu_generation = 0;  // the QEMU it was created in (see qemu_generation_)
  };

  boost::asio::awaitable<void> prepare(std::weak_ptr<bool> alive, tunnel::Channel* channel,
                                       tunnel::PacketHeader call, std::vector<std::uint8_t> body);
  boost::asio::awaitable<void> finish(std::weak_ptr<bool> alive, tunnel::Channel* channel,
                                      tunnel::PacketHeader call, std::vector<std::uint8_t> body);
  boost::asio::awaitable<void> teardown(PreparedMigration m, std::string why);
  boost::asio::awaitable<void> start_server(qmp::QmpClient& q, std::string socket);
  boost::asio::awaitable<qmp::QmpClient*> client();
  void spawn(boost::asio::awaitable<void> work);
  void maybe_idle();

  boost::asio::io_context& io_;
  std::string qmp_path_;
  std::shared_ptr<DestRunDir> run_dir_;
  std::unique_ptr<qmp::QmpClient> qmp_;
  // Counts QMP connections found closed: QEMU closes a monitor only when it exits, so what a
  // migration of an older generation created is gone with that QEMU.
  int qemu_generation_ = 0;
  std::map<std::string, PreparedMigration> migrations_;
  int busy_ = 0;            // coroutines in flight
  bool preparing_ = false;  // a PREPARE holds the destination QEMU (one migration at a time)
  int teardowns_ = 0;       // migrations being removed
  std::function<void()> on_idle_;
};

}  // namespace nbdtunnel::engine
