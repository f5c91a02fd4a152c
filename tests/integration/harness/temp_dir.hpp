#pragma once

#include <filesystem>
#include <string>

namespace nbdtunnel::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
// Set NBDTUNNEL_KEEP_TMP=1 to keep it for a post-mortem. Paths stay short so that UNIX socket
// paths inside it fit in sun_path (108 bytes).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // path()/name as a string, the form every command line wants.
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace nbdtunnel::testing
