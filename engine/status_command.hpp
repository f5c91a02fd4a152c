#pragma once
// `nbdtunnel status`: asks a running `nbdtunnel dest` on its control socket (query-status, see
// engine/dest_monitor.hpp) and shows its channels, their peers, their streams with the bytes
// each way, and the migrations in progress.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

namespace nbdtunnel::engine {

struct StatusArgs {
  std::string control_socket;
  bool json = false;
  double timeout = 5;
};

CLI::App* add_status_command(CLI::App& app, StatusArgs& a);
// Runs the command; returns its exit code (0, 1 when the daemon cannot be asked).
int run_status(const StatusArgs& a);

// The report as a person reads it (a pure function of query-status's answer).
std::string format_status(const nlohmann::json& status);

}  // namespace nbdtunnel::engine
