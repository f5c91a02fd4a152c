#include "tunnel/protocol.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>

#include "tunnel/xdr.hpp"

namespace nbdtunnel::tunnel {

void encode_hello(std::vector<std::uint8_t>& out, const Hello& h) {
  XdrWriter w(out);
  w.u32(h.version);
  w.u64(h.features);
  w.string(h.host_id);
  w.string(h.hostname);
  w.u32(h.window);
  w.u32(h.max_payload);
}

std::string decode_hello(std::span<const std::uint8_t> body, Hello& h) {
  XdrReader r(body);
  h.version = r.u32();
  h.features = r.u64();
  h.host_id = r.string(kMaxHostIdLen);
  h.hostname = r.string(kMaxHostIdLen);
  h.window = r.u32();
  h.max_payload = r.u32();
  if (!r.finish("HELLO body")) return r.error();
  if (h.window < kMinWindow || h.window > kMaxWindow) {
    return fmt::format("HELLO window {} is outside [{}, {}]", h.window, kMinWindow, kMaxWindow);
  }
  if (h.max_payload == 0 || h.max_payload > kMaxStreamPayload) {
    return fmt::format("HELLO max_payload {} is outside [1, {}]", h.max_payload, kMaxStreamPayload);
  }
  return {};
}

void encode_open_tunnel(std::vector<std::uint8_t>& out, const OpenTunnel& o) {
  XdrWriter w(out);
  w.string(o.target);
  w.u32(o.flags);
}

std::string decode_open_tunnel(std::span<const std::uint8_t> body, OpenTunnel& o) {
  XdrReader r(body);
  o.target = r.string(kMaxTargetNameLen);
  o.flags = r.u32();
  if (!r.finish("OPEN_TUNNEL body")) return r.error();
  if (o.target.empty()) return "OPEN_TUNNEL target name is empty";
  return {};
}

void encode_credit(std::vector<std::uint8_t>& out, std::uint32_t bytes) {
  XdrWriter(out).u32(bytes);
}

std::string decode_credit(std::span<const std::uint8_t> body, std::uint32_t& bytes) {
  XdrReader r(body);
  bytes = r.u32();
  if (!r.finish("STREAM_CREDIT body")) return r.error();
  return {};
}

void encode_remote_error(std::vector<std::uint8_t>& out, const RemoteError& e) {
  XdrWriter w(out);
  w.i32(e.code);
  w.i32(e.domain);
  w.optional_string(e.message);
  w.i32(e.level);
  w.u32(0);  // dom: remote_domain pointer, absent
  w.optional_string(e.str1);
  w.optional_string(e.str2);
  w.optional_string(e.str3);
  w.i32(e.int1);
  w.i32(e.int2);
  w.u32(0);  // net: remote_network pointer, absent
}

namespace {
// Skips an optional remote_nonnull_domain / remote_nonnull_network: name, uuid[16] (+ id).
void skip_optional_object(XdrReader& r, bool has_id) {
  const std::uint32_t present = r.u32();
  if (present == 0 || !r.ok()) return;
  r.string(kMaxStringLen);
  std::array<std::uint8_t, 16> uuid{};
  r.fixed_opaque(uuid);
  if (has_id) r.i32();
}
}  // namespace

std::string decode_remote_error(std::span<const std::uint8_t> body, RemoteError& e) {
  XdrReader r(body);
  e.code = r.i32();
  e.domain = r.i32();
  e.message = r.optional_string(kMaxStringLen);
  e.level = r.i32();
  skip_optional_object(r, true);
  e.str1 = r.optional_string(kMaxStringLen);
  e.str2 = r.optional_string(kMaxStringLen);
  e.str3 = r.optional_string(kMaxStringLen);
  e.int1 = r.i32();
  e.int2 = r.i32();
  skip_optional_object(r, false);
  if (!r.finish("remote_error body")) return r.error();
  return {};
}

namespace {
// Reads an XDR array length and checks it against the limit.
std::uint32_t array_length(XdrReader& r, std::size_t max, const char* what, std::string& error) {
  const std::uint32_t n = r.u32();
  if (r.ok() && n > max) {
    error = fmt::format("{} lists {} entries, the limit is {}", what, n, max);
    return 0;
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

std::string decode_prepare(std::span<const std::uint8_t> body, Prepare& p) {
  XdrReader r(body);
  std::string error;
  p.migration_id = r.string(kMaxMigrationIdLen);
  const std::uint32_t n = array_length(r, kMaxDisks, "PREPARE", error);
  if (!error.empty()) return error;
  p.disks.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    PrepareDisk d;
    d.node = r.string(kMaxTargetNameLen);
    d.size = r.u64();
    p.disks.push_back(std::move(d));
  }
  p.flags = r.u32();
  if (!r.finish("PREPARE body")) return r.error();
  if (!valid_migration_id(p.migration_id)) {
    return fmt::format("PREPARE migration id '{}' is not 1-{} of [A-Za-z0-9._-]", p.migration_id,
                       kMaxMigrationIdLen);
  }
  if (p.disks.empty()) return "PREPARE names no disks";
  return {};
}

void encode_prepare_result(std::vector<std::uint8_t>& out, const PrepareResult& res) {
  XdrWriter w(out);
  w.string(res.qemu_version);
  w.string(res.target);
  w.u32(static_cast<std::uint32_t>(res.disks.size()));
  for (const DiskState& d : res.disks) {
    w.string(d.node);
    w.u32(d.exists ? 1 : 0);
    w.u64(d.size);
    w.u32(d.writable ? 1 : 0);
  }
}

std::string decode_prepare_result(std::span<const std::uint8_t> body, PrepareResult& res) {
  XdrReader r(body);
  std::string error;
  res.qemu_version = r.string(kMaxHostIdLen);
  res.target = r.string(kMaxTargetNameLen);
  const std::uint32_t n = array_length(r, kMaxDisks, "PREPARE reply", error);
  if (!error.empty()) return error;
  res.disks.clear();
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    DiskState d;
    d.node = r.string(kMaxTargetNameLen);
    d.exists = r.u32() != 0;
    d.size = r.u64();
    d.writable = r.u32() != 0;
    res.disks.push_back(std::move(d));
  }
  if (!r.finish("PREPARE reply body")) return r.error();
  return {};
}

void encode_finish(std::vector<std::uint8_t>& out, const Finish& f) {
  XdrWriter w(out);
  w.string(f.migration_id);
  w.u32(f.flags);
}

std::string decode_finish(std::span<const std::uint8_t> body, Finish& f) {
  XdrReader r(body);
  f.migration_id = r.string(kMaxMigrationIdLen);
  f.flags = r.u32();
  if (!r.finish("FINISH body")) return r.error();
  if (!valid_migration_id(f.migration_id)) {
    return fmt::format("FINISH migration id '{}' is not valid", f.migration_id);
  }
  return {};
}

bool valid_migration_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxMigrationIdLen) return false;
  if (!std::isalnum(static_cast<unsigned char>(id.front()))) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

RemoteError make_error(ErrorCode code, std::string message) {
  RemoteError e;
  e.code = static_cast<std::int32_t>(code);
  e.message = std::move(message);
  return e;
}

}  // namespace nbdtunnel::tunnel
