#pragma once

// Internal to qmp/: small helpers to read untrusted QMP JSON and quote it in messages.

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace nbdtunnel::qmp {

// At most `max` characters of `text`, with "..." when cut, for quoting peer data in messages.
inline std::string snippet(std::string_view text, std::size_t max = 200) {
  if (text.size() <= max) return std::string(text);
  return std::string(text.substr(0, max)) + "...";
}

// obj[key] if obj is an object and the field is a string, else "".
inline std::string string_field(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return {};
  const auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace nbdtunnel::qmp
