#pragma once
// Who this host is, for HELLO: a stable id (to tell "same host" apart) and a name for messages.

#include <string>

namespace nbdtunnel::engine {

// /etc/machine-id if readable, else the hostname.
std::string machine_id();
std::string host_name();

}  // namespace nbdtunnel::engine
