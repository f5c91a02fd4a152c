#include "engine/cli_values.hpp"

#include <charconv>

#include <fmt/format.h>

#include "tunnel/protocol.hpp"
#include "tunnel/unix_socket.hpp"

namespace nbdtunnel::engine {

namespace {
std::string check_name(const std::string& name) {
  if (name.empty()) return "the target name is empty";
  if (name.size() > tunnel::kMaxTargetNameLen) {
    return fmt::format("the target name is longer than {} bytes", tunnel::kMaxTargetNameLen);
  }
  return {};
}
std::string check_path(const std::string& path) {
  if (path.empty()) return "the socket path is empty";
  if (path.size() > tunnel::max_unix_path()) {
    return fmt::format("the socket path is longer than {} bytes", tunnel::max_unix_path());
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

std::optional<mode_t> parse_mode(const std::string& text, std::string& error) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 8);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || value > 0777) {
    error = fmt::format("--socket-mode '{}' is not an octal mode such as 0600", text);
    return std::nullopt;
  }
  return static_cast<mode_t>(value);
}

}  // namespace nbdtunnel::engine
