// The command-line value parsers (engine/cli_values.hpp) on arbitrary text: --target, --forward,
// --disk, --socket-mode and the numbers (seconds, MiB/s). Each refuses with a message or returns
// parts that put back together give the text again, within the limits the daemon relies on.
#include <fmt/format.h>

#include <cmath>
#include <string>

#include "engine/cli_values.hpp"
#include "fuzz/fuzz_check.hpp"
#include "tunnel/protocol.hpp"

namespace {

using namespace nbdtunnel::engine;

template <class T>
bool refused(const std::optional<T>& v, const std::string& error) {
  if (v) return false;
  FUZZ_CHECK(!error.empty());
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text = nbdtunnel::fuzz::as_string({data, size});
  std::string error;

  if (auto t = parse_target(text, error); !refused(t, error)) {
    const auto& [name, path] = *t;
    FUZZ_CHECK(!name.empty() && name.size() <= nbdtunnel::tunnel::kMaxTargetNameLen);
    FUZZ_CHECK(name.find('=') == std::string::npos && !path.empty());
    FUZZ_CHECK(name + "=" + path == text);
  }
  error.clear();
  if (auto f = parse_forward(text, error); !refused(f, error)) {
    const auto& [path, name] = *f;
    FUZZ_CHECK(!name.empty() && name.size() <= nbdtunnel::tunnel::kMaxTargetNameLen);
    FUZZ_CHECK(name.find('=') == std::string::npos && !path.empty());
    FUZZ_CHECK(path + "=" + name == text);
  }
  error.clear();
  if (auto d = parse_disk(text, error); !refused(d, error)) {
    const auto& [node, dest] = *d;
    FUZZ_CHECK(!node.empty() && node.size() <= 31 && !dest.empty() && dest.size() <= 31);
    FUZZ_CHECK(text == node || text == node + "=" + dest);
    FUZZ_CHECK(text != node || node == dest);
  }
  error.clear();
  if (auto m = parse_mode(text, error); !refused(m, error)) {
    FUZZ_CHECK(*m <= 0777);
    std::string again_error;
    FUZZ_CHECK(parse_mode(fmt::format("{:o}", *m), again_error) == m);
  }
  error.clear();
  if (auto n = parse_number(text, 0.1, 3600, error); !refused(n, error)) {
    FUZZ_CHECK(std::isfinite(*n) && *n >= 0.1 && *n <= 3600);
  }
  return 0;
}
