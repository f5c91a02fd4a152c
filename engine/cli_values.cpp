#include "engine/cli_values.hpp"

#include <fmt/format.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

#include "tunnel/protocol.hpp"

namespace nbdtunnel::engine {

namespace {
// The longest path a UNIX socket address holds, as tunnel::listen_unix checks it; spelt out here
// so that these parsers stay free of the socket code (and fuzzable without it).
constexpr std::size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;

std::string check_name(const std::string& name) {
  if (name.empty()) return "the target name is empty";
  if (name.size() > tunnel::kMaxTargetNameLen) {
    return fmt::format("the target name is longer than {} bytes", tunnel::kMaxTargetNameLen);
  }
  return {};
}
std::string check_path(const std::string& path) {
  if (path.empty()) return "the socket path is empty";
  if (path.size() > kMaxSocketPath) {
    return fmt::format("the socket path is longer than {} bytes", kMaxSocketPath);
  }
  return {};
}
}  // namespace

std::optional<std::pair<std::string, std::string>> parse_target(const std::string& text,
                                                                std::string& error) {
  const auto eq = text.find('=');
  if (eq == std::string::npos) {
    error = fmt::format("--target '{}' is not NAME=PATH", text);
    return std::nullopt;
  }
  std::string name = text.substr(0, eq), path = text.substr(eq + 1);
  std::string why = check_name(name);
  if (why.empty()) why = check_path(path);
  if (!why.empty()) {
    error = fmt::format("--target '{}': {}", text, why);
    return std::nullopt;
  }
  return std::make_pair(std::move(name), std::move(path));
}

std::optional<std::pair<std::string, std::string>> parse_forward(const std::string& text,
                                                                 std::string& error) {
  const auto eq = text.rfind('=');
  if (eq == std::string::npos) {
    error = fmt::format("--forward '{}' is not PATH=NAME", text);
    return std::nullopt;
  }
  std::string path = text.substr(0, eq), name = text.substr(eq + 1);
  std::string why = check_path(path);
  if (why.empty()) why = check_name(name);
  if (!why.empty()) {
    error = fmt::format("--forward '{}': {}", text, why);
    return std::nullopt;
  }
  return std::make_pair(std::move(path), std::move(name));
}

namespace {
// QEMU node names: letters, digits, '-', '.', '_', starting with a letter; at most 31 bytes.
bool valid_node_name(const std::string& n) {
  if (n.empty() || n.size() > 31 || !std::isalpha(static_cast<unsigned char>(n[0]))) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
}
}  // namespace

std::optional<std::pair<std::string, std::string>> parse_disk(const std::string& text,
                                                              std::string& error) {
  const auto eq = text.find('=');
  std::string node = text.substr(0, eq);
  std::string dest = eq == std::string::npos ? node : text.substr(eq + 1);
  for (const std::string& n : {node, dest}) {
    if (!valid_node_name(n)) {
      error = fmt::format(
          "--disk '{}': '{}' is not a QEMU node name (a letter, then letters, digits, '-', '.', "
          "'_'; at most 31 bytes)",
          text, n);
      return std::nullopt;
    }
  }
  return std::make_pair(std::move(node), std::move(dest));
}

std::optional<mode_t> parse_mode(const std::string& text, std::string& error) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 8);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || value > 0777) {
    error = fmt::format("--socket-mode '{}' is not an octal mode such as 0600", text);
    return std::nullopt;
  }
  return static_cast<mode_t>(value);
}

std::optional<double> parse_number(const std::string& text, double lo, double hi,
                                   std::string& error) {
  double value = 0;
  auto [end, ec] =
      std::from_chars(text.data(), text.data() + text.size(), value, std::chars_format::general);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() ||
      !std::isfinite(value)) {
    error = fmt::format("'{}' is not a number", text);
    return std::nullopt;
  }
  if (value < lo || value > hi) {
    error = fmt::format("{} is not between {} and {}", text, lo, hi);
    return std::nullopt;
  }
  return value;
}

}  // namespace nbdtunnel::engine
