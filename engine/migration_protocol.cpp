#include "engine/migration_protocol.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "tunnel/xdr.hpp"

namespace nbdtunnel::engine {

using tunnel::input_error;
using tunnel::Result;
using tunnel::XdrReader;
using tunnel::XdrWriter;

namespace {
// Reads an XDR array length and checks it against the limit (the reader's error wins).
Result<std::uint32_t> array_length(XdrReader& r, std::size_t max, const char* what) {
  const std::uint32_t n = r.u32();
  if (r.ok() && n > max) {
    return input_error(fmt::format("{} lists {} entries, the limit is {}", what, n, max));
  }
  return n;
}
}  // namespace

void encode_prepare(std::vector<std::uint8_t>& out, const Prepare& p) {
  XdrWriter w(out);
  w.string(p.migration_id);
  w.u32(static_cast<std::uint32_t>(p.disks.size()));
  for (const PrepareDisk& d : p.disks) {
    w.string(d.node);
    w.u64(d.size);
  }
  w.u32(p.flags);
}

Result<Prepare> decode_prepare(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  Prepare p;
  p.migration_id = r.string(kMaxMigrationIdLen);
  const Result<std::uint32_t> n = array_length(r, kMaxDisks, "PREPARE");
  if (!n) return n.error();
  for (std::uint32_t i = 0; i < *n && r.ok(); ++i) {
    PrepareDisk d;
    d.node = r.string(tunnel::kMaxTargetNameLen);
    d.size = r.u64();
    p.disks.push_back(std::move(d));
  }
  p.flags = r.u32();
  if (!r.finish("PREPARE body")) return r.error();
  if (!valid_migration_id(p.migration_id)) {
    return input_error(fmt::format("PREPARE migration id '{}' is not 1-{} of [A-Za-z0-9._-]",
                                   p.migration_id, kMaxMigrationIdLen));
  }
  if (p.disks.empty()) return input_error("PREPARE names no disks");
  return p;
}

void encode_prepare_result(std::vector<std::uint8_t>& out, const PrepareResult& res) {
  XdrWriter w(out);
  w.string(res.qemu_version);
  w.string(res.target);
  w.u32(static_cast<std::uint32_t>(res.disks.size()));
  for (const DestDiskReport& d : res.disks) {
    w.string(d.node);
    w.u32(d.exists ? 1 : 0);
    w.u64(d.size);
    w.u32(d.writable ? 1 : 0);
  }
}

Result<PrepareResult> decode_prepare_result(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  PrepareResult res;
  res.qemu_version = r.string(tunnel::kMaxHostIdLen);
  res.target = r.string(tunnel::kMaxTargetNameLen);
  const Result<std::uint32_t> n = array_length(r, kMaxDisks, "PREPARE reply");
  if (!n) return n.error();
  for (std::uint32_t i = 0; i < *n && r.ok(); ++i) {
    DestDiskReport d;
    d.node = r.string(tunnel::kMaxTargetNameLen);
    d.exists = r.u32() != 0;
    d.size = r.u64();
    d.writable = r.u32() != 0;
    res.disks.push_back(std::move(d));
  }
  if (!r.finish("PREPARE reply body")) return r.error();
  return res;
}

void encode_finish(std::vector<std::uint8_t>& out, const Finish& f) {
  XdrWriter w(out);
  w.string(f.migration_id);
  w.u32(f.flags);
}

Result<Finish> decode_finish(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  Finish f;
  f.migration_id = r.string(kMaxMigrationIdLen);
  f.flags = r.u32();
  if (!r.finish("FINISH body")) return r.error();
  if (!valid_migration_id(f.migration_id)) {
    return input_error(fmt::format("FINISH migration id '{}' is not valid", f.migration_id));
  }
  return f;
}

bool valid_migration_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxMigrationIdLen) return false;
  if (!std::isalnum(static_cast<unsigned char>(id.front()))) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

}  // namespace nbdtunnel::engine
