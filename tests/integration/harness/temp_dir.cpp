#include "tests/integration/harness/temp_dir.hpp"

#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <system_error>

namespace nbdtunnel::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/nbdt-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::system_error(errno, std::generic_category(), "mkdtemp " + tmpl);
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  const char* keep = std::getenv("NBDTUNNEL_KEEP_TMP");
  if (keep != nullptr && *keep != '\0' && *keep != '0') {
    std::cerr << "keeping temp dir " << path_ << " (NBDTUNNEL_KEEP_TMP)\n";
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) std::cerr << "warning: cannot remove " << path_ << ": " << ec.message() << "\n";
}

}  // namespace nbdtunnel::testing
