#pragma once
// What the ops tests share: running a command for its output.

#include <optional>
#include <string>
#include <vector>

#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::testing {

struct CommandOutput {
  std::optional<int> exit;  // nullopt: killed at the timeout
  std::string output;       // stdout and stderr together
};

// Runs argv to completion (bounded by timeout) and returns its exit code and output.
CommandOutput capture(const TempDir& dir, const std::string& name, std::vector<std::string> argv,
                      Seconds timeout = Seconds(60));

// The whole file, or "" if it cannot be read.
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& text);

// Sends request to 127.0.0.1:port and returns everything the server sent until it closed
// (nullopt: it did not close within timeout).
std::optional<std::string> http_exchange(int port, const std::string& request,
                                         Seconds timeout = Seconds(10));

}  // namespace nbdtunnel::testing
