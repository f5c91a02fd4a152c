#include "engine/control_command.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace nbdtunnel::engine {

using nlohmann::json;

json control_error_reply(std::string_view cls, std::string_view desc) {
  return {{"error", {{"class", cls}, {"desc", desc}}}};
}

// (Not a coroutine: see "Coroutines under GCC 12" in docs/DESIGN-NOTES.md.)
namespace {
// How deeply arrays and objects nest in a JSON text (brackets inside strings do not count).
// Serialising a value is recursive: a line of 64 KiB of '[' would exhaust the stack.
std::size_t nesting(const std::string& text) {
  std::size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}
}  // namespace

bool parse_control_command(const std::string& line, ControlCommand& command, json& error) {
  if (nesting(line) > kMaxControlNesting) {
    error = control_error_reply(
        "GenericError", fmt::format("the line nests arrays and objects more than {} levels deep",
                                    kMaxControlNesting));
    return false;
  }
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    // parse_error for bad syntax; out_of_range for a number no double holds, such as 1e999.
    error = control_error_reply("GenericError",
                                fmt::format("the line is not valid JSON: {}", e.what()));
    return false;
  }
  if (!j.is_object()) {
    error = control_error_reply(
        "GenericError", R"(a command must be a JSON object: {"execute":"NAME","arguments":{}})");
    return false;
  }
  if (auto id = j.find("id"); id != j.end()) command.id = std::move(*id);
  const auto execute = j.find("execute");
  if (execute == j.end() || !execute->is_string()) {
    error = control_error_reply(
        "GenericError",
        R"(the command has no "execute" string: {"execute":"NAME","arguments":{}})");
    return false;
  }
  command.command = execute->get<std::string>();
  if (auto args = j.find("arguments"); args != j.end()) {
    if (!args->is_object()) {
      error = control_error_reply(
          "GenericError",
          fmt::format(R"("arguments" of '{}' must be a JSON object)", command.command));
      return false;
    }
    command.arguments = std::move(*args);
  }
  return true;
}

}  // namespace nbdtunnel::engine
