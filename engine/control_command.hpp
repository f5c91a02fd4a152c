#pragma once
// One request line of the `nbdtunnel migrate` control socket, parsed. No I/O: ControlServer
// reads the lines, this decides what they ask for (and what to answer when they ask nothing).
//
//   {"execute":"NAME","arguments":{...},"id":ANY}      arguments and id optional

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace nbdtunnel::engine {

struct ControlCommand {
  std::string command;
  nlohmann::json arguments = nlohmann::json::object();
  std::optional<nlohmann::json> id;  // echoed in the reply, even an error reply
};

// Arrays and objects nested deeper than this are refused before parsing.
inline constexpr std::size_t kMaxControlNesting = 32;

// Parses one line. On a line that is not a valid command returns false with `error` set to the
// GenericError reply (without "id"); `command.id` is still set if the line is an object with one.
// Never throws.
bool parse_control_command(const std::string& line, ControlCommand& command, nlohmann::json& error);

// {"error":{"class":CLS,"desc":DESC}}
nlohmann::json control_error_reply(std::string_view cls, std::string_view desc);

}  // namespace nbdtunnel::engine
