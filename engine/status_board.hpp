#pragma once
// What a running `nbdtunnel dest` reports to `nbdtunnel status`: each of its threads describes
// its own channels, on its own thread (nothing of a channel is shared or locked), when asked.
// Shared by the daemon's threads and the monitor thread that asks (engine/dest_monitor.hpp).

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

namespace nbdtunnel::engine {

class StatusBoard {
 public:
  // Returns one thread's report: {"listen": ..., "channels": [...]} (see DestServer::describe).
  using Describe = std::function<nlohmann::json()>;

  // A thread's servant: describe runs on ex. key identifies it for detach.
  void attach(const void* key, boost::asio::any_io_executor ex, Describe describe);
  // Must come before whatever describe uses is destroyed.
  void detach(const void* key);
  // Every thread's report, in an array; a thread that does not answer within timeout gives
  // {"error": ...} instead. Blocks the caller (which must not be one of those threads).
  nlohmann::json collect(std::chrono::milliseconds timeout) const;

 private:
  struct Entry {
    boost::asio::any_io_executor ex;
    Describe describe;
  };
  mutable std::mutex mutex_;
  std::map<const void*, Entry> entries_;
};

}  // namespace nbdtunnel::engine
