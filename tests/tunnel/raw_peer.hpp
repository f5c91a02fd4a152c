#pragma once
// The far end of a channel in tests: a socket that speaks raw packets, written and read by hand.

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

#include "tunnel/protocol.hpp"
#include "tunnel/unique_fd.hpp"

namespace nbdtunnel::tunnel::testing {

using Bytes = std::vector<std::uint8_t>;

struct Packet {
  PacketHeader h;
  Bytes body;
};

// A header of our program (version 1) unless another program is given.
PacketHeader hdr(std::uint32_t proc, PacketType type, std::uint32_t serial,
                 PacketStatus status = PacketStatus::ok, std::uint32_t program = kProgram);

class RawPeer {
 public:
  RawPeer() = default;
  explicit RawPeer(unique_fd fd) : fd_(std::move(fd)) {}

  // Sends one whole packet; false if the socket took less.
  bool send(PacketHeader h, const Bytes& body = {});
  void send_raw(const Bytes& bytes);
  // Reads one packet, or nullopt on EOF, timeout or a framing error.
  std::optional<Packet> read_packet(std::chrono::milliseconds timeout = std::chrono::seconds(3));
  // True if the channel closes its end within timeout (whatever it sends first is dropped).
  bool sees_eof(std::chrono::milliseconds timeout);
  int fd() const { return fd_.get(); }

 private:
  unique_fd fd_;
  Bytes inbox_;
};

}  // namespace nbdtunnel::tunnel::testing
