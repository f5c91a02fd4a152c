#pragma once
// Packet framing: a 4-byte big-endian length (counting itself), a 24-byte header, a body.
// Pure functions over byte spans; no I/O.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tunnel/protocol.hpp"
#include "tunnel/result.hpp"

namespace nbdtunnel::tunnel {

// One decoded packet: its header and a view of its body inside the input.
struct Frame {
  PacketHeader header;
  std::span<const std::uint8_t> body;
  std::size_t consumed = 0;  // bytes of input this frame used
};

// Decodes the first packet of `in`: a frame, nullopt if more bytes are needed, or an error. Errors
// are framing errors (bad length): the stream of bytes can no longer be trusted. Unknown header
// values are not errors here; see check_header().
Result<std::optional<Frame>> decode_packet(std::span<const std::uint8_t> in,
                                           std::size_t max_packet = kMaxPacket);

// Decodes the 28-byte prefix only (length word and header): a frame with consumed = 28 and an
// empty body, nullopt if fewer bytes are in, or an error as soon as the length word is bad.
Result<std::optional<Frame>> decode_prefix(std::span<const std::uint8_t> in,
                                           std::size_t max_packet = kMaxPacket);

// An error if type or status are not values of this protocol.
Status check_header(const PacketHeader& h);

// A header of `program` (its version filled in); length is set when the packet is written.
PacketHeader make_header(std::uint32_t program, std::uint32_t procedure, PacketType type,
                         std::uint32_t serial, PacketStatus status);

// The header of a STREAM packet of the stream opened by OPEN_TUNNEL call `serial`.
PacketHeader stream_header(std::uint32_t serial, PacketStatus status);

// Writes the 28-byte prefix (length word + header) for a body of body_len bytes.
void write_prefix(std::uint8_t* out, PacketHeader h, std::size_t body_len);

// Builds a whole packet: prefix then body.
std::vector<std::uint8_t> make_packet(PacketHeader h, std::span<const std::uint8_t> body = {});

const char* type_name(std::uint32_t type);
// "OPEN_TUNNEL", "keepalive PING", or "program 0x… procedure N" for unknown ones.
std::string procedure_name(std::uint32_t program, std::uint32_t procedure);

}  // namespace nbdtunnel::tunnel
