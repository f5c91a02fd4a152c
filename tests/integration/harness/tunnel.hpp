#pragma once

#include <string>
#include <vector>

#include "tests/integration/harness/process.hpp"
#include "tests/integration/harness/temp_dir.hpp"

namespace nbdtunnel::testing {

// The nbdtunnel executable under test: $NBDTUNNEL_BINARY if set, else the one CMake built.
std::string nbdtunnel_binary();

struct TunnelDest {
  Process process;
  int port = 0;
};

// Starts `nbdtunnel dest --listen 127.0.0.1:PORT --target T...` (port 0: a free one) and waits
// for its "listening on" line to learn the port. Throws, after printing the log, if it does not
// come up within 10 s. Logs go to dir/<name>.log.
TunnelDest start_dest(const TempDir& dir, const std::vector<std::string>& targets,
                      const std::vector<std::string>& extra_args = {}, int port = 0,
                      const std::string& name = "dest");

// Starts `nbdtunnel source --connect 127.0.0.1:PORT --forward F...`, waits until every forward
// is logged and, if `wait_connected`, for "channel connected to". Throws like start_dest.
Process start_source(const TempDir& dir, int port, const std::vector<std::string>& forwards,
                     const std::vector<std::string>& extra_args = {}, bool wait_connected = true,
                     const std::string& name = "source");

// Escapes regex metacharacters so a path can be searched for literally in a log.
std::string regex_escape(const std::string& text);

}  // namespace nbdtunnel::testing
