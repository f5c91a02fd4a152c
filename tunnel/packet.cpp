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

namespace {
// Checks the length word at the start of in (4 bytes at least).
Status check_length(std::uint32_t length, std::size_t max_packet) {
  if (length < kPrefixSize) {
    return input_error(
        fmt::format("packet length {} is shorter than the {}-byte minimum", length, kPrefixSize));
  }
  if (length > max_packet) {
    return input_error(fmt::format("packet length {} exceeds the limit of {}", length, max_packet));
  }
  return {};
}

PacketHeader load_header(const std::uint8_t* p) {
  return PacketHeader{load_be32(p),      load_be32(p + 4),  load_be32(p + 8), load_be32(p + 12),
                      load_be32(p + 16), load_be32(p + 20), load_be32(p + 24)};
}
}  // namespace

Result<std::optional<Frame>> decode_prefix(std::span<const std::uint8_t> in,
                                           std::size_t max_packet) {
  if (in.size() < kLengthSize) return std::optional<Frame>{};
  if (Status s = check_length(load_be32(in.data()), max_packet); !s) return s.error();
  if (in.size() < kPrefixSize) return std::optional<Frame>{};
  return std::optional<Frame>{Frame{load_header(in.data()), {}, kPrefixSize}};
}

Result<std::optional<Frame>> decode_packet(std::span<const std::uint8_t> in,
                                           std::size_t max_packet) {
  if (in.size() < kLengthSize) return std::optional<Frame>{};
  const std::uint32_t length = load_be32(in.data());
  if (Status s = check_length(length, max_packet); !s) return s.error();
  if (in.size() < length) return std::optional<Frame>{};
  return std::optional<Frame>{
      Frame{load_header(in.data()), in.subspan(kPrefixSize, length - kPrefixSize), length}};
}

Status check_header(const PacketHeader& h) {
  if (h.type > static_cast<std::uint32_t>(PacketType::stream)) {
    return input_error(fmt::format("unknown packet type {}", h.type));
  }
  if (h.status > static_cast<std::uint32_t>(PacketStatus::cont)) {
    return input_error(fmt::format("unknown packet status {}", h.status));
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

PacketHeader stream_header(std::uint32_t serial, PacketStatus status) {
  return make_header(kProgram, static_cast<std::uint32_t>(Proc::domain_migrate_open_tunnel),
                     PacketType::stream, serial, status);
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
      case Proc::resume:
        return "RESUME";
      case Proc::ack:
        return "ACK";
      case Proc::goodbye:
        return "GOODBYE";
    }
  } else if (program == kKeepaliveProgram) {
    if (procedure == static_cast<std::uint32_t>(KeepaliveProc::ping)) return "keepalive PING";
    if (procedure == static_cast<std::uint32_t>(KeepaliveProc::pong)) return "keepalive PONG";
  }
  return fmt::format("program {:#x} procedure {}", program, procedure);
}

}  // namespace nbdtunnel::tunnel
