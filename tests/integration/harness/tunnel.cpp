#include "tests/integration/harness/tunnel.hpp"

#include <cstdlib>
#include <stdexcept>

namespace nbdtunnel::testing {
namespace {

constexpr Seconds kStartTimeout{10};

[[noreturn]] void startup_failed(Process& p, const std::string& what) {
  p.dump_log();
  throw std::runtime_error(p.name() + ": " + what + " (command: " + p.command_line() + ")");
}

}  // namespace

std::string nbdtunnel_binary() {
  const char* env = std::getenv("NBDTUNNEL_BINARY");
  if (env != nullptr && *env != '\0') return env;
  return NBDTUNNEL_BINARY;
}

std::string regex_escape(const std::string& text) {
  static const std::string special = R"(\^$.|?*+()[]{}/)";
  std::string out;
  for (char c : text) {
    if (special.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

TunnelDest start_dest(const TempDir& dir, const std::vector<std::string>& targets,
                      const std::vector<std::string>& extra_args, int port,
                      const std::string& name) {
  std::vector<std::string> argv{nbdtunnel_binary(), "dest", "--listen",
                                "127.0.0.1:" + std::to_string(port)};
  for (const auto& t : targets) {
    argv.push_back("--target");
    argv.push_back(t);
  }
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  Process p(name, std::move(argv), dir.file(name + ".log"));
  auto m = p.wait_for_log(R"(listening on [^\s]*:(\d+))", kStartTimeout);
  if (!m) startup_failed(p, "no 'listening on HOST:PORT' line");
  int actual = std::stoi((*m)[1]);
  return TunnelDest{std::move(p), actual};
}

Process start_source(const TempDir& dir, int port, const std::vector<std::string>& forwards,
                     const std::vector<std::string>& extra_args, bool wait_connected,
                     const std::string& name) {
  std::vector<std::string> argv{nbdtunnel_binary(), "source", "--connect",
                                "127.0.0.1:" + std::to_string(port)};
  for (const auto& f : forwards) {
    argv.push_back("--forward");
    argv.push_back(f);
  }
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  Process p(name, std::move(argv), dir.file(name + ".log"));
  for (const auto& f : forwards) {
    const std::string path = f.substr(0, f.rfind('='));
    if (!p.wait_for_log("forwarding " + regex_escape(path), kStartTimeout)) {
      startup_failed(p, "no 'forwarding " + path + "' line");
    }
  }
  if (wait_connected && !p.wait_for_log("channel connected to", kStartTimeout)) {
    startup_failed(p, "no 'channel connected to' line");
  }
  return p;
}

}  // namespace nbdtunnel::testing
