#include "qmp/block_jobs.hpp"

#include <fmt/format.h>

#include "qmp/qmp_text.hpp"

namespace nbdtunnel::qmp {

namespace asio = boost::asio;
using nlohmann::json;

namespace {

// Throws QmpError(execute) naming the command and the missing piece of its reply.
[[noreturn]] void malformed(const QmpClient& qmp, const char* command, const std::string& what) {
  throw QmpError(QmpError::Phase::execute,
                 fmt::format("malformed reply to QMP command '{}' on {}: {}", command,
                             qmp.socket_path(), what));
}

const json& field(const QmpClient& qmp, const char* command, const json& obj, const char* key) {
  if (!obj.is_object())
    malformed(qmp, command, fmt::format("expected an object, got {}", obj.type_name()));
  const auto it = obj.find(key);
  if (it == obj.end())
    malformed(qmp, command, fmt::format("missing field '{}' in {}", key, snippet(obj.dump())));
  return *it;
}

std::string get_string(const QmpClient& qmp, const char* command, const json& obj,
                       const char* key) {
  const auto& v = field(qmp, command, obj, key);
  if (!v.is_string()) malformed(qmp, command, fmt::format("field '{}' is not a string", key));
  return v.get<std::string>();
}

std::uint64_t get_u64(const QmpClient& qmp, const char* command, const json& obj, const char* key) {
  const auto& v = field(qmp, command, obj, key);
  if (!v.is_number_unsigned()) {
    malformed(qmp, command, fmt::format("field '{}' is not a non-negative integer", key));
  }
  return v.get<std::uint64_t>();
}

bool get_bool(const QmpClient& qmp, const char* command, const json& obj, const char* key) {
  const auto& v = field(qmp, command, obj, key);
  if (!v.is_boolean()) malformed(qmp, command, fmt::format("field '{}' is not a boolean", key));
  return v.get<bool>();
}

const json& as_array(const QmpClient& qmp, const char* command, const json& reply) {
  if (!reply.is_array())
    malformed(qmp, command, fmt::format("expected an array, got {}", reply.type_name()));
  return reply;
}

}  // namespace

asio::awaitable<void> blockdev_add_nbd(QmpClient& qmp, std::string node_name,
                                       std::string unix_socket_path, std::string export_name) {
  json args = {{"driver", "nbd"},
               {"node-name", std::move(node_name)},
               {"server", {{"type", "unix"}, {"path", std::move(unix_socket_path)}}},
               {"export", std::move(export_name)}};
  co_await qmp.execute("blockdev-add", std::move(args));
}

asio::awaitable<void> blockdev_del(QmpClient& qmp, std::string node_name) {
  json args = {{"node-name", std::move(node_name)}};
  co_await qmp.execute("blockdev-del", std::move(args));
}

asio::awaitable<void> blockdev_mirror(QmpClient& qmp, std::string job_id, std::string device,
                                      std::string target, MirrorSync sync, std::uint64_t speed,
                                      MirrorJobFlags flags) {
  json args = {{"job-id", std::move(job_id)},
               {"device", std::move(device)},
               {"target", std::move(target)},
               {"sync", sync == MirrorSync::full ? "full" : "top"},
               {"speed", speed},
               {"auto-finalize", flags.auto_finalize},
               {"auto-dismiss", flags.auto_dismiss}};
  co_await qmp.execute("blockdev-mirror", std::move(args));
}

asio::awaitable<void> block_job_cancel(QmpClient& qmp, std::string job_id, bool force) {
  json args = {{"device", std::move(job_id)}, {"force", force}};
  co_await qmp.execute("block-job-cancel", std::move(args));
}

asio::awaitable<void> block_job_set_speed(QmpClient& qmp, std::string job_id, std::uint64_t speed) {
  json args = {{"device", std::move(job_id)}, {"speed", speed}};
  co_await qmp.execute("block-job-set-speed", std::move(args));
}

asio::awaitable<std::vector<BlockJobInfo>> query_block_jobs(QmpClient& qmp) {
  constexpr const char* cmd = "query-block-jobs";
  json args = json::object();
  const json reply = co_await qmp.execute(cmd, std::move(args));
  std::vector<BlockJobInfo> jobs;
  for (const auto& j : as_array(qmp, cmd, reply)) {
    jobs.push_back({.id = get_string(qmp, cmd, j, "device"),
                    .type = get_string(qmp, cmd, j, "type"),
                    .status = get_string(qmp, cmd, j, "status"),
                    .offset = get_u64(qmp, cmd, j, "offset"),
                    .len = get_u64(qmp, cmd, j, "len"),
                    .speed = get_u64(qmp, cmd, j, "speed"),
                    .ready = get_bool(qmp, cmd, j, "ready")});
  }
  co_return jobs;
}

asio::awaitable<std::vector<BlockNodeInfo>> query_named_block_nodes(QmpClient& qmp) {
  constexpr const char* cmd = "query-named-block-nodes";
  // flat: list each node once, without nesting backing images.
  json args = {{"flat", true}};
  const json reply = co_await qmp.execute(cmd, std::move(args));
  std::vector<BlockNodeInfo> nodes;
  for (const auto& n : as_array(qmp, cmd, reply)) {
    nodes.push_back({.node_name = get_string(qmp, cmd, n, "node-name"),
                     .driver = get_string(qmp, cmd, n, "drv"),
                     .size = get_u64(qmp, cmd, field(qmp, cmd, n, "image"), "virtual-size"),
                     .read_only = get_bool(qmp, cmd, n, "ro")});
  }
  co_return nodes;
}

asio::awaitable<void> nbd_server_start_unix(QmpClient& qmp, std::string socket_path) {
  // nbd-server-start takes the legacy SocketAddress form, with a "data" wrapper.
  json args = {{"addr", {{"type", "unix"}, {"data", {{"path", std::move(socket_path)}}}}}};
  co_await qmp.execute("nbd-server-start", std::move(args));
}

asio::awaitable<void> nbd_server_stop(QmpClient& qmp) {
  json args = json::object();  // explicit, not the default: docs/DESIGN-NOTES.md, GCC 12
  co_await qmp.execute("nbd-server-stop", std::move(args));
}

asio::awaitable<void> block_export_add_nbd(QmpClient& qmp, std::string id, std::string node_name,
                                           std::string export_name, bool writable) {
  json args = {{"type", "nbd"},
               {"id", std::move(id)},
               {"node-name", std::move(node_name)},
               {"name", std::move(export_name)},
               {"writable", writable}};
  co_await qmp.execute("block-export-add", std::move(args));
}

asio::awaitable<void> block_export_del(QmpClient& qmp, std::string id) {
  json args = {{"id", std::move(id)}};
  co_await qmp.execute("block-export-del", std::move(args));
}

}  // namespace nbdtunnel::qmp
