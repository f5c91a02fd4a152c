#pragma once
// What a `dest --qmp` daemon has created in its destination QEMU (NBD servers, block exports),
// as the lines of its state file, so that the next daemon for that QEMU can remove what a dead
// one left. The codec is pure: text in, records or an error out (fuzzed: fuzz/dest_state_fuzz).
//
//   nbdtunnel-dest-state 1
//   qmp PATH                     the QEMU's QMP socket (absolute, canonical)
//   server ID PATH               migration ID started the NBD server on the UNIX socket PATH
//   export ID EXPORT             migration ID added block export EXPORT (named nbdtunnel-*)
//
// A line is written before the QMP command that creates what it names, so a record may name
// something that never came to exist; removing it then finds nothing, which is fine.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "tunnel/result.hpp"

namespace nbdtunnel::engine {

inline constexpr std::size_t kMaxDestStateBytes = 64 * 1024;
inline constexpr std::size_t kMaxDestStateLines = 1024;
inline constexpr std::size_t kMaxDestStatePath = 4096;
inline constexpr std::size_t kMaxExportIdLen = 128;
inline constexpr const char* kDestExportPrefix = "nbdtunnel-";

// One migration's creations.
struct DestRecord {
  std::string migration_id;
  std::string server_socket;  // empty: no NBD server recorded
  std::vector<std::string> exports;
  bool operator==(const DestRecord&) const = default;
};

struct DestState {
  std::string qmp;
  std::vector<DestRecord> migrations;
  bool empty() const { return migrations.empty(); }
  bool operator==(const DestState&) const = default;
};

// True for an export id this daemon may create and remove: nbdtunnel-[A-Za-z0-9._-]+.
bool valid_dest_export_id(std::string_view id);

// Parses a state file; any malformed or oversized input is an error naming the line.
tunnel::Result<DestState> parse_dest_state(std::string_view text);
// The file's text for `state` (parse_dest_state gives it back).
std::string encode_dest_state(const DestState& state);

}  // namespace nbdtunnel::engine
