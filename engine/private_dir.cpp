#include "engine/private_dir.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

namespace nbdtunnel::engine {

PrivateDir::~PrivateDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

bool PrivateDir::create(const std::string& prefix, std::string& error) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = fmt::format("{}/{}-XXXXXX", tmp && *tmp ? tmp : "/tmp", prefix);
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    error = fmt::format("cannot create a private directory {}: {}", templ, std::strerror(errno));
    return false;
  }
  path_ = buf.data();
  return true;
}

}  // namespace nbdtunnel::engine
