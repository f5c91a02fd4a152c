#pragma once

// Typed wrappers over the QMP block commands a storage migration needs. Each is one command;
// replies are parsed defensively (a missing or mistyped field throws QmpError, never crashes).

#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "qmp/qmp_client.hpp"

namespace nbdtunnel::qmp {

enum class MirrorSync { full, top };

// Job lifecycle flags of blockdev-mirror; the defaults match QEMU's.
struct MirrorJobFlags {
  bool auto_finalize = true;
  bool auto_dismiss = true;
};

// One entry of query-block-jobs ("device" is the job id for block jobs).
struct BlockJobInfo {
  std::string id;
  std::string type;    // "mirror", "commit", ...
  std::string status;  // "running", "ready", "concluded", ...
  std::uint64_t offset = 0;
  std::uint64_t len = 0;
  std::uint64_t speed = 0;
  bool ready = false;
};

// One entry of query-named-block-nodes.
struct BlockNodeInfo {
  std::string node_name;
  std::string driver;
  std::uint64_t size = 0;  // image virtual-size
  bool read_only = false;
};

// blockdev-add driver=nbd: a node reading/writing an NBD export served on a UNIX socket.
boost::asio::awaitable<void> blockdev_add_nbd(QmpClient& qmp, std::string node_name,
                                              std::string unix_socket_path,
                                              std::string export_name);
boost::asio::awaitable<void> blockdev_del(QmpClient& qmp, std::string node_name);

// blockdev-mirror from `device` into the node `target`; speed in bytes/s, 0 = unlimited.
boost::asio::awaitable<void> blockdev_mirror(QmpClient& qmp, std::string job_id, std::string device,
                                             std::string target, MirrorSync sync = MirrorSync::full,
                                             std::uint64_t speed = 0, MirrorJobFlags flags = {});
boost::asio::awaitable<void> block_job_cancel(QmpClient& qmp, std::string job_id,
                                              bool force = false);
boost::asio::awaitable<void> block_job_set_speed(QmpClient& qmp, std::string job_id,
                                                 std::uint64_t speed);
boost::asio::awaitable<std::vector<BlockJobInfo>> query_block_jobs(QmpClient& qmp);
boost::asio::awaitable<std::vector<BlockNodeInfo>> query_named_block_nodes(QmpClient& qmp);

boost::asio::awaitable<void> nbd_server_start_unix(QmpClient& qmp, std::string socket_path);
boost::asio::awaitable<void> nbd_server_stop(QmpClient& qmp);
boost::asio::awaitable<void> block_export_add_nbd(QmpClient& qmp, std::string id,
                                                  std::string node_name, std::string export_name,
                                                  bool writable);
boost::asio::awaitable<void> block_export_del(QmpClient& qmp, std::string id);

}  // namespace nbdtunnel::qmp
