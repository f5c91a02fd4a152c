#include "engine/dest_recovery.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include "engine/dest_migrations.hpp"
#include "qmp/block_jobs.hpp"
#include "qmp/qmp_client.hpp"

namespace nbdtunnel::engine {

namespace {

using json = nlohmann::json;

// The ids of the QEMU's block exports.
boost::asio::awaitable<std::vector<std::string>> export_ids(qmp::QmpClient& q) {
  json no_args = json::object();
  const json exports = co_await q.execute("query-block-exports", std::move(no_args));
  std::vector<std::string> ids;
  for (const auto& e : exports) {
    if (e.is_object() && e.contains("id") && e["id"].is_string()) ids.push_back(e["id"]);
  }
  co_return ids;
}

// One dead migration's exports, then its server if nothing else is exported from it.
boost::asio::awaitable<void> remove_record(qmp::QmpClient& q, DestRecord r) {
  const std::vector<std::string> present = co_await export_ids(q);
  for (const std::string& e : r.exports) {
    if (std::find(present.begin(), present.end(), e) == present.end()) continue;
    co_await remove_block_export(q, e);
    spdlog::warn(
        "removed export {} of migration '{}' from the destination QEMU, left by a "
        "daemon that died",
        e, r.migration_id);
  }
  if (r.server_socket.empty()) co_return;
  const std::vector<std::string> left = co_await export_ids(q);
  if (!left.empty()) {
    std::string list;
    for (const auto& id : left) list += (list.empty() ? "" : ", ") + id;
    spdlog::warn("leaving the destination QEMU's NBD server running: it still exports {}", list);
    co_return;
  }
  std::string failure;
  try {
    co_await qmp::nbd_server_stop(q);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (failure.empty()) {
    spdlog::warn(
        "stopped the destination QEMU's NBD server ({}) of migration '{}', left by a "
        "daemon that died",
        r.server_socket, r.migration_id);
  } else {
    spdlog::info("the NBD server of migration '{}' is not running ({})", r.migration_id, failure);
  }
}

boost::asio::awaitable<void> recover(qmp::QmpClient& q, std::string qmp_path, DestRunDir& dir,
                                     bool& done) {
  co_await q.connect(qmp_path);
  const std::vector<DestRecord> records = dir.previous().migrations;
  for (const DestRecord& r : records) {
    co_await remove_record(q, r);
    dir.forget(r.migration_id);
  }
  done = true;
}

}  // namespace

void recover_dest_qemu(const std::string& qmp_path, DestRunDir& dir,
                       std::chrono::milliseconds timeout) {
  const DestState& dead = dir.previous();
  if (dead.empty()) return;
  spdlog::info(
      "removing what a dead daemon recorded for the destination QEMU at {} ({} "
      "migration(s))",
      qmp_path, dead.migrations.size());
  boost::asio::io_context io;
  bool done = false;
  std::string failure;
  {
    qmp::QmpClient q(io.get_executor());
    boost::asio::co_spawn(io, recover(q, qmp_path, dir, done), [&](std::exception_ptr e) {
      io.stop();  // the QMP client's reader would keep the loop running
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        failure = ex.what();
      }
    });
    io.run_for(timeout);
    q.close();
    io.restart();
    io.run_for(std::chrono::milliseconds(500));
  }
  if (done) return;
  spdlog::warn("could not remove what the dead daemon left in the destination QEMU at {}: {}",
               qmp_path,
               failure.empty() ? fmt::format("no answer within {} ms", timeout.count()) : failure);
  // If QEMU is gone, so are its exports; if it only did not answer, the first PREPARE finds
  // them and removes those named nbdtunnel-*.
  for (const DestRecord& r : std::vector<DestRecord>(dead.migrations)) dir.forget(r.migration_id);
}

}  // namespace nbdtunnel::engine
