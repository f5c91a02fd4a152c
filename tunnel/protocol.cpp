#include "tunnel/protocol.hpp"

#include <fmt/format.h>

#include <array>

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
  if (h.features & kFeatureResume) {
    w.fixed_opaque(h.ticket.id);
    w.fixed_opaque(h.ticket.secret);
    w.u32(h.ticket.timeout_ms);
  }
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
  if (h.features & kFeatureResume) {
    r.fixed_opaque(h.ticket.id);
    r.fixed_opaque(h.ticket.secret);
    h.ticket.timeout_ms = r.u32();
  }
  if (!r.finish("HELLO body")) return r.error();
  if (h.ticket.timeout_ms > kMaxResumeTimeoutMs) {
    return input_error(fmt::format("HELLO resume timeout {} ms is over the limit of {} ms",
                                   h.ticket.timeout_ms, kMaxResumeTimeoutMs));
  }
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

void encode_resume_request(std::vector<std::uint8_t>& out, const ResumeRequest& q) {
  XdrWriter w(out);
  w.fixed_opaque(q.id);
  w.fixed_opaque(q.secret);
  w.u64(q.received);
}

Result<ResumeRequest> decode_resume_request(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  ResumeRequest q;
  r.fixed_opaque(q.id);
  r.fixed_opaque(q.secret);
  q.received = r.u64();
  if (!r.finish("RESUME body")) return r.error();
  return q;
}

void encode_received(std::vector<std::uint8_t>& out, std::uint64_t received) {
  XdrWriter(out).u64(received);
}

Result<std::uint64_t> decode_received(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  const std::uint64_t received = r.u64();
  if (!r.finish("byte count")) return r.error();
  return received;
}

void encode_goodbye(std::vector<std::uint8_t>& out, const std::string& reason) {
  XdrWriter(out).string(reason.substr(0, kMaxStringLen));
}

Result<std::string> decode_goodbye(std::span<const std::uint8_t> body) {
  XdrReader r(body);
  std::string reason = r.string(kMaxStringLen);
  if (!r.finish("GOODBYE body")) return r.error();
  return reason;
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

RemoteError make_error(ErrorCode code, std::string message) {
  RemoteError e;
  e.code = static_cast<std::int32_t>(code);
  e.message = std::move(message);
  return e;
}

}  // namespace nbdtunnel::tunnel
