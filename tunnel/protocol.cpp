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

Result<Hello> decode_hello(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  Hello h;
  h.version = r.u32();
  h.features = r.u64();
  h.host_id = r.string(kMaxHostIdLen);
  h.hostname = r.string(kMaxHostIdLen);
  h.window = r.u32();
  h.max_payload = r.u32();
  if (!r.finish("HELLO body")) return r.error();
  if (h.window < kMinWindow || h.window > kMaxWindow) {
    return input_error(
        fmt::format("HELLO window {} is outside [{}, {}]", h.window, kMinWindow, kMaxWindow));
  }
  if (h.max_payload == 0 || h.max_payload > kMaxStreamPayload) {
    return input_error(
        fmt::format("HELLO max_payload {} is outside [1, {}]", h.max_payload, kMaxStreamPayload));
  }
  return h;
}

void encode_open_tunnel(std::vector<std::uint8_t>& out, const OpenTunnel& o) {
  XdrWriter w(out);
  w.string(o.target);
  w.u32(o.flags);
}

Result<OpenTunnel> decode_open_tunnel(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  OpenTunnel o;
  o.target = r.string(kMaxTargetNameLen);
  o.flags = r.u32();
  if (!r.finish("OPEN_TUNNEL body")) return r.error();
  if (o.target.empty()) return input_error("OPEN_TUNNEL target name is empty");
  return o;
}

void encode_credit(std::vector<std::uint8_t>& out, std::uint32_t bytes) {
  XdrWriter(out).u32(bytes);
}

Result<std::uint32_t> decode_credit(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  const std::uint32_t bytes = r.u32();
  if (!r.finish("STREAM_CREDIT body")) return r.error();
  return bytes;
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

Result<RemoteError> decode_remote_error(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  RemoteError e;
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
  return e;
}

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
    d.node = r.string(kMaxTargetNameLen);
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
  for (const DiskState& d : res.disks) {
    w.string(d.node);
    w.u32(d.exists ? 1 : 0);
    w.u64(d.size);
    w.u32(d.writable ? 1 : 0);
  }
}

Result<PrepareResult> decode_prepare_result(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  PrepareResult res;
  res.qemu_version = r.string(kMaxHostIdLen);
  res.target = r.string(kMaxTargetNameLen);
  const Result<std::uint32_t> n = array_length(r, kMaxDisks, "PREPARE reply");
  if (!n) return n.error();
  for (std::uint32_t i = 0; i < *n && r.ok(); ++i) {
    DiskState d;
    d.node = r.string(kMaxTargetNameLen);
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

RemoteError make_error(ErrorCode code, std::string message) {
  RemoteError e;
  e.code = static_cast<std::int32_t>(code);
  e.message = std::move(message);
  return e;
}

// Transitional out-parameter forms (see protocol.hpp).
std::string decode_hello(std::span<const std::uint8_t> body, Hello& h) {
  Result<Hello> r = decode_hello(body);
  if (!r) return r.error().message;
  h = std::move(*r);
  return {};
}

std::string decode_open_tunnel(std::span<const std::uint8_t> body, OpenTunnel& o) {
  Result<OpenTunnel> r = decode_open_tunnel(body);
  if (!r) return r.error().message;
  o = std::move(*r);
  return {};
}

std::string decode_credit(std::span<const std::uint8_t> body, std::uint32_t& bytes) {
  Result<std::uint32_t> r = decode_credit(body);
  if (!r) return r.error().message;
  bytes = *r;
  return {};
}

std::string decode_remote_error(std::span<const std::uint8_t> body, RemoteError& e) {
  Result<RemoteError> r = decode_remote_error(body);
  if (!r) return r.error().message;
  e = std::move(*r);
  return {};
}

}  // namespace nbdtunnel::tunnel
