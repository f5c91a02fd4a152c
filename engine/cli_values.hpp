#pragma once
// Parsers for command-line values; each returns nullopt and fills error on bad input.

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>

namespace nbdtunnel::engine {

// "NAME=PATH" (split at the first '=').
std::optional<std::pair<std::string, std::string>> parse_target(const std::string& text,
                                                                std::string& error);
// "PATH=NAME" (split at the last '=').
std::optional<std::pair<std::string, std::string>> parse_forward(const std::string& text,
                                                                 std::string& error);
// "NODE" or "NODE=DESTNODE" (a QEMU node name on each side).
std::optional<std::pair<std::string, std::string>> parse_disk(const std::string& text,
                                                              std::string& error);
// An octal permission mode such as 0600.
std::optional<mode_t> parse_mode(const std::string& text, std::string& error);
// A finite decimal number in [lo, hi] ("nan", "inf", "1e999", "12abc" are refused).
std::optional<double> parse_number(const std::string& text, double lo, double hi,
                                   std::string& error);

}  // namespace nbdtunnel::engine
