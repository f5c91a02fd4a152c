#pragma once
// A private (0700) temporary directory, removed with everything in it when destroyed.

#include <string>

namespace nbdtunnel::engine {

class PrivateDir {
 public:
  PrivateDir() = default;
  PrivateDir(const PrivateDir&) = delete;
  PrivateDir& operator=(const PrivateDir&) = delete;
  ~PrivateDir();
  // Creates $TMPDIR/PREFIX-XXXXXX (or /tmp). False with error filled on failure.
  bool create(const std::string& prefix, std::string& error);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace nbdtunnel::engine
