#include "engine/host_identity.hpp"

#include <unistd.h>

#include <fstream>

namespace nbdtunnel::engine {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

std::string machine_id() {
  std::ifstream in("/etc/machine-id");
  std::string id;
  if (in && std::getline(in, id) && !id.empty() && id.size() <= 64) return id;
  return host_name();
}

}  // namespace nbdtunnel::engine
