#pragma once
// The procedures the migration engine adds to the nbdtunnel program: PREPARE and FINISH, their
// limits and bodies. The channel does not know them: it hands every call it does not serve itself
// to ChannelEvents::on_call, and the engine answers. docs/PROTOCOL.md ("Migrations") says the same
// in prose; tests/engine/migration_protocol_test.cpp holds their golden bytes.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tunnel/protocol.hpp"
#include "tunnel/result.hpp"

namespace nbdtunnel::engine {

// Procedures of tunnel::kProgram served by the engine (tunnel's own are 1 to 3).
enum class MigrationProc : std::uint32_t {
  prepare = 4,  // CALL: check (and export) destination disks for a migration.
  finish = 5,   // CALL: remove what PREPARE created (flag: abort).
  // The libvirt role (`dest --libvirt`): the same bodies, but disks are image paths and PREPARE
  // creates the migration's run directory instead of exports.
  libvirt_prepare = 6,
  libvirt_finish = 7,
};
// The procedure number as tunnel::Channel::call and PacketHeader carry it.
constexpr std::uint32_t procedure_number(MigrationProc p) {
  return static_cast<std::uint32_t>(p);
}

inline constexpr std::size_t kMaxDisks = 64;
inline constexpr std::size_t kMaxMigrationIdLen = 64;

// PREPARE: the source names the destination nodes it will mirror into and their sizes.
inline constexpr std::uint32_t kPrepareCheckOnly = 1;  // report, change nothing
struct PrepareDisk {
  std::string node;        // destination node name
  std::uint64_t size = 0;  // source disk size, bytes
  friend bool operator==(const PrepareDisk&, const PrepareDisk&) = default;
};
struct Prepare {
  std::string migration_id;
  std::vector<PrepareDisk> disks;
  std::uint32_t flags = 0;
  friend bool operator==(const Prepare&, const Prepare&) = default;
};
// What the destination found for one disk named in a PREPARE.
struct DestDiskReport {
  std::string node;
  bool exists = false;
  std::uint64_t size = 0;
  bool writable = false;
  friend bool operator==(const DestDiskReport&, const DestDiskReport&) = default;
};
struct PrepareResult {
  std::string qemu_version;  // destination QEMU, "" if the daemon has no --qmp
  std::string target;        // OPEN_TUNNEL target name serving this migration's exports
  std::vector<DestDiskReport> disks;
  friend bool operator==(const PrepareResult&, const PrepareResult&) = default;
};
inline constexpr std::uint32_t kFinishAbort = 1;
struct Finish {
  std::string migration_id;
  std::uint32_t flags = 0;
  friend bool operator==(const Finish&, const Finish&) = default;
};

// Each encode_* appends a body; each decode_* parses a whole body and returns it, or an
// input_error saying what is malformed.
void encode_prepare(std::vector<std::uint8_t>& out, const Prepare& p);
tunnel::Result<Prepare> decode_prepare(std::span<const std::uint8_t> body);
void encode_prepare_result(std::vector<std::uint8_t>& out, const PrepareResult& r);
tunnel::Result<PrepareResult> decode_prepare_result(std::span<const std::uint8_t> body);
void encode_finish(std::vector<std::uint8_t>& out, const Finish& f);
tunnel::Result<Finish> decode_finish(std::span<const std::uint8_t> body);

// A migration id names QEMU exports and socket files: 1..64 of [A-Za-z0-9._-], starting with a
// letter or digit.
bool valid_migration_id(std::string_view id);

}  // namespace nbdtunnel::engine
