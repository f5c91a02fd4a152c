#include "qmp/blocking_qmp.hpp"

#include <fmt/format.h>

namespace nbdtunnel::qmp {

using nlohmann::json;

BlockingQmp::BlockingQmp(const std::string& socket_path, std::chrono::milliseconds timeout,
                         QmpLimits limits)
    : client_(io_.get_executor(), limits) {
  run(client_.connect(socket_path, timeout));
}

BlockingQmp::~BlockingQmp() {
  client_.close();
  // Let the background reader and writer see the close and finish (bounded).
  io_.restart();
  io_.run_for(std::chrono::seconds(2));
}

json BlockingQmp::execute(const std::string& cmd, json args, std::chrono::milliseconds timeout) {
  return run(client_.execute(cmd, std::move(args), timeout));
}

json BlockingQmp::wait_event(const std::string& name, std::function<bool(const json&)> match,
                             std::chrono::milliseconds timeout) {
  return run(client_.wait_event(name, std::move(match), timeout));
}

std::vector<json> BlockingQmp::take_events() {
  io_.restart();
  io_.poll();
  return client_.take_events();
}

std::string BlockingQmp::hmp(const std::string& command_line, std::chrono::milliseconds timeout) {
  json out = execute("human-monitor-command", {{"command-line", command_line}}, timeout);
  if (!out.is_string()) {
    throw QmpError(QmpError::Phase::execute,
                   fmt::format("human-monitor-command '{}' on {} returned {} instead of a string",
                               command_line, client_.socket_path(), out.type_name()));
  }
  return out.get<std::string>();
}

void BlockingQmp::drive(const bool& done) {
  io_.restart();
  while (!done && io_.run_one() > 0) {
  }
  if (!done) {
    // Unreachable while every QmpClient wait carries a timer; fail loudly rather than hang.
    throw QmpError(QmpError::Phase::disconnect,
                   fmt::format("QMP client for {} ran out of work before its call finished",
                               client_.socket_path()));
  }
}

}  // namespace nbdtunnel::qmp
