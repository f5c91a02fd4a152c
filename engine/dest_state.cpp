#include "engine/dest_state.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "engine/migration_protocol.hpp"

namespace nbdtunnel::engine {

namespace {

constexpr std::string_view kHeader = "nbdtunnel-dest-state 1";

// A path as the file may hold it: absolute, bounded, no control characters.
bool valid_path(std::string_view p) {
  return !p.empty() && p.front() == '/' && p.size() <= kMaxDestStatePath &&
         std::none_of(p.begin(), p.end(),
                      [](char c) { return static_cast<unsigned char>(c) < 32; });
}

DestRecord& record_for(DestState& s, std::string_view id) {
  for (DestRecord& r : s.migrations) {
    if (r.migration_id == id) return r;
  }
  s.migrations.push_back(DestRecord{std::string(id), {}, {}});
  return s.migrations.back();
}

}  // namespace

bool valid_dest_export_id(std::string_view id) {
  const std::string_view prefix = kDestExportPrefix;
  if (id.size() <= prefix.size() || id.size() > kMaxExportIdLen ||
      id.substr(0, prefix.size()) != prefix) {
    return false;
  }
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

tunnel::Result<DestState> parse_dest_state(std::string_view text) {
  if (text.size() > kMaxDestStateBytes) {
    return tunnel::input_error(fmt::format("larger than {} bytes", kMaxDestStateBytes));
  }
  DestState s;
  std::size_t line_no = 0;
  std::size_t records = 0;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    if (nl == std::string_view::npos) {
      return tunnel::input_error(fmt::format("line {}: no end of line", line_no + 1));
    }
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (++line_no > kMaxDestStateLines) {
      return tunnel::input_error(fmt::format("more than {} lines", kMaxDestStateLines));
    }
    auto bad = [&](const char* why) {
      return tunnel::input_error(fmt::format("line {}: {}", line_no, why));
    };
    if (line_no == 1) {
      if (line != kHeader) return bad("not an nbdtunnel dest state file (version 1)");
      continue;
    }
    const std::size_t sp = line.find(' ');
    if (sp == std::string_view::npos) return bad("no value");
    const std::string_view key = line.substr(0, sp);
    const std::string_view rest = line.substr(sp + 1);
    if (key == "qmp") {
      if (!s.qmp.empty()) return bad("a second qmp line");
      if (!valid_path(rest)) return bad("the QMP path is not an absolute path");
      s.qmp = std::string(rest);
      continue;
    }
    if (key != "server" && key != "export") return bad("unknown keyword");
    const std::size_t sp2 = rest.find(' ');
    if (sp2 == std::string_view::npos) return bad("no value after the migration id");
    const std::string_view id = rest.substr(0, sp2);
    const std::string_view value = rest.substr(sp2 + 1);
    if (!valid_migration_id(id)) return bad("not a migration id");
    if (key == "server") {
      if (!valid_path(value)) return bad("the server socket is not an absolute path");
      DestRecord& r = record_for(s, id);
      if (!r.server_socket.empty()) return bad("a second server for one migration");
      r.server_socket = std::string(value);
    } else {
      if (!valid_dest_export_id(value)) return bad("not an export id named nbdtunnel-*");
      record_for(s, id).exports.emplace_back(value);
    }
    ++records;
  }
  if (line_no == 0) return tunnel::input_error("empty");
  if (records > 0 && s.qmp.empty()) return tunnel::input_error("records without a qmp line");
  return s;
}

std::string encode_dest_state(const DestState& state) {
  std::string out = std::string(kHeader) + "\n";
  if (!state.qmp.empty()) out += "qmp " + state.qmp + "\n";
  for (const DestRecord& r : state.migrations) {
    if (!r.server_socket.empty()) out += "server " + r.migration_id + " " + r.server_socket + "\n";
    for (const std::string& e : r.exports) out += "export " + r.migration_id + " " + e + "\n";
  }
  return out;
}

}  // namespace nbdtunnel::engine
