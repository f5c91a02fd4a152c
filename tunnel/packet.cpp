#include "tunnel/packet.hpp"

#include <fmt/format.h>

namespace nbdtunnel::tunnel {

namespace {
std::uint32_t load_be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}
void store_be32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}
}  // namespace

DecodeResult decode_prefix(std::span<const std::uint8_t> in, std::size_t max_packet) {
  DecodeResult r;
  if (in.size() < kLengthSize) return r;
  const std::uint32_t length = load_be32(in.data());
  if (length < kPrefixSize || length > max_packet) return decode_packet(in.first(4), max_packet);
  if (in.size() < kPrefixSize) return r;
  const std::uint8_t* p = in.data();
  r.status = DecodeResult::Status::frame;
  r.header = PacketHeader{length,
                          load_be32(p + 4),
                          load_be32(p + 8),
                          load_be32(p + 12),
                          load_be32(p + 16),
                          load_be32(p + 20),
                          load_be32(p + 24)};
  r.consumed = kPrefixSize;
  return r;
}

DecodeResult decode_packet(std::span<const std::uint8_t> in, std::size_t max_packet) {
  DecodeResult r;
  if (in.size() < kLengthSize) return r;
  const std::uint32_t length = load_be32(in.data());
  if (length < kPrefixSize) {
    r.status = DecodeResult::Status::error;
    r.error =
        fmt::format("packet length {} is shorter than the {}-byte minimum", length, kPrefixSize);
    return r;
  }
  if (length > max_packet) {
    r.status = DecodeResult::Status::error;
    r.error = fmt::format("packet length {} exceeds the limit of {}", length, max_packet);
    return r;
  }
  if (in.size() < length) return r;
  const std::uint8_t* p = in.data();
  r.status = DecodeResult::Status::frame;
  r.header.length = length;
  r.header.program = load_be32(p + 4);
  r.header.version = load_be32(p + 8);
  r.header.procedure = load_be32(p + 12);
  r.header.type = load_be32(p + 16);
  r.header.serial = load_be32(p + 20);
  r.header.status = load_be32(p + 24);
  r.body = in.subspan(kPrefixSize, length - kPrefixSize);
  r.consumed = length;
  return r;
}

std::string check_header(const PacketHeader& h) {
  if (h.type > static_cast<std::uint32_t>(PacketType::stream)) {
    return fmt::format("unknown packet type {}", h.type);
  }
  if (h.status > static_cast<std::uint32_t>(PacketStatus::cont)) {
    return fmt::format("unknown packet status {}", h.status);
  }
  return {};
}

PacketHeader make_header(std::uint32_t program, std::uint32_t procedure, PacketType type,
                         std::uint32_t serial, PacketStatus status) {
  return PacketHeader{0,
                      program,
                      program == kKeepaliveProgram ? kKeepaliveVersion : kProgramVersion,
                      procedure,
                      static_cast<std::uint32_t>(type),
                      serial,
                      static_cast<std::uint32_t>(status)};
}

void write_prefix(std::uint8_t* out, PacketHeader h, std::size_t body_len) {
  store_be32(out, static_cast<std::uint32_t>(kPrefixSize + body_len));
  store_be32(out + 4, h.program);
  store_be32(out + 8, h.version);
  store_be32(out + 12, h.procedure);
  store_be32(out + 16, h.type);
  store_be32(out + 20, h.serial);
  store_be32(out + 24, h.status);
}

std::vector<std::uint8_t> make_packet(PacketHeader h, std::span<const std::uint8_t> body) {
  std::vector<std::uint8_t> out(kPrefixSize + body.size());
  write_prefix(out.data(), h, body.size());
  std::copy(body.begin(), body.end(), out.begin() + kPrefixSize);
  return out;
}

const char* type_name(std::uint32_t type) {
  switch (static_cast<PacketType>(type)) {
    case PacketType::call:
      return "CALL";
    case PacketType::reply:
      return "REPLY";
    case PacketType::message:
      return "MESSAGE";
    case PacketType::stream:
      return "STREAM";
  }
  return "UNKNOWN";
}

std::string procedure_name(std::uint32_t program, std::uint32_t procedure) {
  if (program == kProgram) {
    switch (static_cast<Proc>(procedure)) {
      case Proc::hello:
        return "HELLO";
      case Proc::domain_migrate_open_tunnel:
        return "OPEN_TUNNEL";
      case Proc::stream_credit:
        return "STREAM_CREDIT";
      case Proc::prepare:
        return "PREPARE";
      case Proc::finish:
        return "FINISH";
    }
  } else if (program == kKeepaliveProgram) {
    if (procedure == static_cast<std::uint32_t>(KeepaliveProc::ping)) return "keepalive PING";
    if (procedure == static_cast<std::uint32_t>(KeepaliveProc::pong)) return "keepalive PONG";
  }
  return fmt::format("program {:#x} procedure {}", program, procedure);
}

const char* status_name(std::uint32_t status) {
  switch (static_cast<PacketStatus>(status)) {
    case PacketStatus::ok:
      return "OK";
    case PacketStatus::error:
      return "ERROR";
    case PacketStatus::cont:
      return "CONTINUE";
  }
  return "UNKNOWN";
}

}  // namespace nbdtunnel::tunnel
