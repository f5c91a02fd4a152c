#include "engine/dest_migrations.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "engine/migration_protocol.hpp"
#include "qmp/block_jobs.hpp"
#include "qmp/qmp_error.hpp"

namespace nbdtunnel::engine {

namespace {
constexpr const char* kTargetPrefix = "migration/";
}  // namespace

DestMigrations::DestMigrations(boost::asio::io_context& io, std::string qmp_path,
                               std::shared_ptr<DestRunDir> run_dir)
    : io_(io), qmp_path_(std::move(qmp_path)), run_dir_(std::move(run_dir)) {}

DestMigrations::~DestMigrations() {
  for (const auto& [id, m] : migrations_) ::unlink(m.socket.c_str());
}

void DestMigrations::spawn(boost::asio::awaitable<void> work) {
  ++busy_;
  boost::asio::co_spawn(io_, std::move(work), [this](std::exception_ptr e) {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::error("migration handler failed: {}", ex.what());
      }
    }
    --busy_;
    maybe_idle();
  });
}

void DestMigrations::maybe_idle() {
  if (on_idle_ && idle()) {
    auto done = std::move(on_idle_);
    on_idle_ = nullptr;
    done();
  }
}

void DestMigrations::on_call(tunnel::Channel& channel, const tunnel::PacketHeader& call,
                             std::span<const std::uint8_t> body) {
  std::vector<std::uint8_t> copy(body.begin(), body.end());
  switch (static_cast<MigrationProc>(call.procedure)) {
    case MigrationProc::prepare:
      spawn(prepare(channel.liveness(), &channel, call, std::move(copy)));
      return;
    case MigrationProc::finish:
      spawn(finish(channel.liveness(), &channel, call, std::move(copy)));
      return;
    case MigrationProc::libvirt_prepare:
    case MigrationProc::libvirt_finish:
      break;  // DestLibvirt's
  }
  // The channel forwards every call it does not serve itself: what is not ours is unknown.
  channel.reply_error(call, tunnel::ErrorCode::unsupported,
                      fmt::format("unknown procedure {}", call.procedure));
}

std::optional<std::string> DestMigrations::resolve(const tunnel::Channel& channel,
                                                   const std::string& target) const {
  if (target.rfind(kTargetPrefix, 0) != 0) return std::nullopt;
  auto it = migrations_.find(target.substr(std::string_view(kTargetPrefix).size()));
  if (it == migrations_.end() || it->second.owner != &channel) return std::nullopt;
  return it->second.socket;
}

boost::asio::awaitable<qmp::QmpClient*> DestMigrations::client() {
  if (!qmp_ || !qmp_->is_connected()) {
    // QEMU closes a monitor connection only when it exits: say so, not just "connection refused".
    const bool lost = qmp_ != nullptr;
    if (lost) {
      spdlog::warn("the destination QEMU closed its QMP connection ({}): has it stopped?",
                   qmp_path_);
      ++qemu_generation_;
    }
    qmp_ = std::make_unique<qmp::QmpClient>(io_.get_executor());
    std::string failure;
    try {
      co_await qmp_->connect(qmp_path_);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (!failure.empty()) {
      qmp_.reset();
      if (!lost) throw std::runtime_error(failure);
      throw std::runtime_error(fmt::format(
          "it has stopped: it closed its QMP connection and accepts no new one ({})", failure));
    }
    spdlog::info("connected to destination QEMU {} on {}", qmp_->qemu_version(), qmp_path_);
  }
  co_return qmp_.get();
}

boost::asio::awaitable<void> DestMigrations::prepare(std::weak_ptr<bool> alive,
                                                     tunnel::Channel* channel,
                                                     tunnel::PacketHeader call,
                                                     std::vector<std::uint8_t> body) {
  auto fail = [&](tunnel::ErrorCode code, const std::string& msg) {
    spdlog::warn("PREPARE refused: {}", msg);
    if (!alive.expired()) channel->reply_error(call, code, msg);
  };
  tunnel::Result<Prepare> decoded = decode_prepare(body);
  if (!decoded) {
    fail(tunnel::ErrorCode::protocol, decoded.error().message);
    co_return;
  }
  const Prepare req = std::move(*decoded);
  if (qmp_path_.empty()) {
    fail(tunnel::ErrorCode::unsupported,
         "this destination daemon was started without --qmp, so it cannot prepare disks");
    co_return;
  }
  const bool check_only = (req.flags & kPrepareCheckOnly) != 0;
  if (!check_only) {
    // A migration whose channel lost its connection may still be resumed, but not once the QEMU
    // is wanted for a new one: its engine is most likely gone (killed), and whoever prepares
    // now has authenticated like it. It is ended, and its cleanup waited for.
    bool superseded = false;
    for (auto& [id, m] : migrations_) {
      if (m.owner == channel || !m.owner->detached()) continue;
      spdlog::warn(
          "migration {}: its channel lost its connection and waits to be resumed, but a "
          "new migration is being prepared: ending it",
          id);
      const_cast<tunnel::Channel*>(m.owner)->close(
          "superseded: a new migration was prepared while the connection was lost");
      superseded = true;
    }
    // The previous migration may still be being cleaned up: wait for that, not for a live one.
    const auto ending = [this] {
      return std::any_of(migrations_.begin(), migrations_.end(),
                         [](const auto& e) { return e.second.owner->closing(); });
    };
    for (int i = 0; i < 300 && !preparing_ &&
                    ((teardowns_ > 0 && migrations_.empty()) || (superseded && ending()));
         ++i) {
      boost::asio::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(boost::asio::use_awaitable);
    }
    if (alive.expired()) co_return;
    if (!migrations_.empty() || preparing_ || teardowns_ > 0) {
      // Which migration, and for whom, is not this peer's business.
      fail(tunnel::ErrorCode::limit,
           "the destination QEMU is already serving another migration; try again when it has "
           "finished");
      co_return;
    }
  }
  // Holds the slot from here until this PREPARE has registered its migration or given up.
  struct SlotGuard {
    bool& flag;
    explicit SlotGuard(bool& f) : flag(f) { flag = true; }
    ~SlotGuard() { flag = false; }
  };
  std::optional<SlotGuard> slot;
  if (!check_only) slot.emplace(preparing_);
  PreparedMigration m;
  m.id = req.migration_id;
  m.owner = channel;
  try {
    qmp::QmpClient& q = *co_await client();
    m.qemu_generation = qemu_generation_;
    PrepareResult result;
    result.qemu_version = q.qemu_version();
    const auto nodes = co_await qmp::query_named_block_nodes(q);
    std::string problems;
    for (const PrepareDisk& d : req.disks) {
      DestDiskReport s;
      s.node = d.node;
      for (const auto& n : nodes) {
        if (n.node_name == d.node) {
          s.exists = true;
          s.size = n.size;
          s.writable = !n.read_only;
        }
      }
      if (!s.exists) {
        problems += fmt::format("; node '{}' does not exist", d.node);
      } else if (s.size < d.size) {
        problems +=
            fmt::format("; node '{}' has {} bytes, the source disk {}", d.node, s.size, d.size);
      } else if (!s.writable) {
        problems += fmt::format("; node '{}' is read-only", d.node);
      }
      result.disks.push_back(s);
    }
    if (!check_only) {
      if (!problems.empty()) {
        fail(tunnel::ErrorCode::protocol, "destination disks are not usable" + problems);
        co_return;
      }
      if (alive.expired()) co_return;
      m.socket = fmt::format("{}/nbd-{}.sock", run_dir_->path(), m.id);
      ::unlink(m.socket.c_str());
      // Recorded before it exists: a daemon that dies now leaves its successor the record.
      run_dir_->record_server(m.id, m.socket);
      co_await start_server(q, m.socket);
      m.server_started = true;
      for (std::size_t i = 0; i < req.disks.size(); ++i) {
        const std::string export_id = fmt::format("nbdtunnel-{}-{}", m.id, i);
        run_dir_->record_export(m.id, export_id);
        co_await qmp::block_export_add_nbd(q, export_id, req.disks[i].node, req.disks[i].node,
                                           true);
        m.export_ids.push_back(export_id);
      }
      result.target = kTargetPrefix + m.id;
      migrations_.emplace(m.id, m);
      spdlog::info("migration '{}': exported {} disk(s) on {}", m.id, m.export_ids.size(),
                   m.socket);
    }
    if (alive.expired()) {
      if (!check_only) {
        migrations_.erase(m.id);
        co_await teardown(m, "the channel closed during PREPARE");
      }
      co_return;
    }
    std::vector<std::uint8_t> out;
    encode_prepare_result(out, result);
    channel->reply(call, out);
  } catch (const std::exception& e) {
    const std::string msg = fmt::format("destination QEMU ({}): {}", qmp_path_, e.what());
    fail(tunnel::ErrorCode::target_unavailable, msg);
    if (m.server_started) {
      migrations_.erase(m.id);
      spawn(teardown(m, "PREPARE failed"));
    } else if (!check_only && run_dir_) {
      run_dir_->forget(m.id);  // nothing was created (or the server was someone else's)
    }
  }
}

boost::asio::awaitable<void> DestMigrations::finish(std::weak_ptr<bool> alive,
                                                    tunnel::Channel* channel,
                                                    tunnel::PacketHeader call,
                                                    std::vector<std::uint8_t> body) {
  tunnel::Result<Finish> decoded = decode_finish(body);
  if (!decoded) {
    if (!alive.expired()) {
      channel->reply_error(call, tunnel::ErrorCode::protocol, decoded.error().message);
    }
    co_return;
  }
  const Finish req = std::move(*decoded);
  auto it = migrations_.find(req.migration_id);
  if (it == migrations_.end() || it->second.owner != channel) {
    if (!alive.expired()) {
      channel->reply_error(
          call, tunnel::ErrorCode::protocol,
          fmt::format("no migration '{}' was prepared on this channel", req.migration_id));
    }
    co_return;
  }
  PreparedMigration m = it->second;
  migrations_.erase(it);
  const bool abort = (req.flags & kFinishAbort) != 0;
  co_await teardown(m, abort ? "aborted by the source" : "finished");
  if (!alive.expired()) channel->reply(call);
}

boost::asio::awaitable<void> DestMigrations::teardown(PreparedMigration m, std::string why) {
  ++teardowns_;
  struct Done {
    int& count;
    ~Done() { --count; }
  } done{teardowns_};
  spdlog::info("migration '{}': removing its exports ({})", m.id, why);
  try {
    qmp::QmpClient& q = *co_await client();
    if (m.qemu_generation != qemu_generation_) {
      // A QEMU at the same path now is another one: nothing of this migration is in it.
      spdlog::info("migration '{}': nothing to remove, the QEMU it was prepared in has stopped",
                   m.id);
      m.export_ids.clear();
      m.server_started = false;
    }
    for (std::size_t i = 0; i < m.export_ids.size(); ++i) {
      std::string failure;
      try {
        co_await remove_block_export(q, m.export_ids[i]);
      } catch (const std::exception& e) {
        failure = e.what();
      }
      if (!failure.empty()) {
        spdlog::warn("migration '{}': removing export {}: {}", m.id, m.export_ids[i], failure);
      }
    }
    if (m.server_started) co_await qmp::nbd_server_stop(q);
    // Reached QEMU: what is not removed now failed for a reason a successor would meet too.
    if (run_dir_) run_dir_->forget(m.id);
  } catch (const std::exception& e) {
    spdlog::warn("migration '{}': cleanup on {}: {}", m.id, qmp_path_, e.what());
    // Kept in the record for the next daemon, unless that QEMU has stopped: it took them along.
    if (run_dir_ && m.qemu_generation != qemu_generation_) run_dir_->forget(m.id);
  }
  ::unlink(m.socket.c_str());
}

// Arguments are named locals: see "Coroutines under GCC 12" in docs/DESIGN-NOTES.md.
boost::asio::awaitable<void> remove_block_export(qmp::QmpClient& q, const std::string& id) {
  nlohmann::json args = nlohmann::json::object();
  args["id"] = id;
  args["mode"] = "hard";
  std::string command = "block-export-del";
  co_await q.execute(std::move(command), std::move(args));
  std::string event = "BLOCK_EXPORT_DELETED";
  qmp::QmpClient::EventMatch match = [id](const nlohmann::json& e) {
    return e.contains("data") && e["data"].is_object() && e["data"].value("id", "") == id;
  };
  co_await q.wait_event(std::move(event), std::move(match), std::chrono::seconds(10));
}

namespace {
// The ids of the destination QEMU's block exports.
std::vector<std::string> export_ids(const nlohmann::json& exports) {
  std::vector<std::string> ids;
  if (!exports.is_array()) return ids;
  for (const auto& e : exports) {
    if (e.is_object() && e.contains("id") && e["id"].is_string()) ids.push_back(e["id"]);
  }
  return ids;
}
}  // namespace

// Starts the NBD server. If one is already running and serves only exports named nbdtunnel-*
// that no migration here owns, a previous daemon died without cleaning up: remove those and retry.
// Any other server is someone else's and is left alone.
boost::asio::awaitable<void> DestMigrations::start_server(qmp::QmpClient& q, std::string socket) {
  std::string path = socket;  // kept for the retry
  std::string failure;
  try {
    co_await qmp::nbd_server_start_unix(q, std::move(socket));
  } catch (const qmp::QmpError& e) {
    failure = e.what();
  }
  if (failure.empty()) co_return;
  if (failure.find("already running") == std::string::npos) {
    throw std::runtime_error("nbd-server-start: " + failure);
  }
  nlohmann::json no_args = nlohmann::json::object();
  const nlohmann::json exports = co_await q.execute("query-block-exports", std::move(no_args));
  const std::vector<std::string> ids = export_ids(exports);
  const bool ours = !ids.empty() && std::all_of(ids.begin(), ids.end(), [](const std::string& id) {
    return id.rfind("nbdtunnel-", 0) == 0;
  });
  if (!ours) {
    std::string list;
    for (const auto& id : ids) list += (list.empty() ? "" : ", ") + id;
    throw std::runtime_error(fmt::format(
        "the destination QEMU already runs an NBD server that nbdtunnel did not create (exports: "
        "{}); stop it (nbd-server-stop) or use another QEMU",
        list.empty() ? "none" : list));
  }
  spdlog::warn("removing {} export(s) and the NBD server left by a previous nbdtunnel dest",
               ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) co_await remove_block_export(q, ids[i]);
  co_await qmp::nbd_server_stop(q);
  co_await qmp::nbd_server_start_unix(q, std::move(path));
}

void DestMigrations::channel_closed(tunnel::Channel& channel) {
  for (auto it = migrations_.begin(); it != migrations_.end();) {
    if (it->second.owner == &channel) {
      spawn(teardown(it->second, "its channel closed"));
      it = migrations_.erase(it);
    } else {
      ++it;
    }
  }
}

void DestMigrations::shutdown(std::function<void()> done) {
  for (auto& [id, m] : migrations_) spawn(teardown(m, "the daemon is stopping"));
  migrations_.clear();
  on_idle_ = std::move(done);
  maybe_idle();
}

std::vector<std::string> DestMigrations::owned_by(const tunnel::Channel& channel) const {
  std::vector<std::string> ids;
  for (const auto& [id, m] : migrations_) {
    if (m.owner == &channel) ids.push_back(id);
  }
  return ids;
}

}  // namespace nbdtunnel::engine
