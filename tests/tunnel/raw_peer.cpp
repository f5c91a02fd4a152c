#include "raw_peer.hpp"

#include <poll.h>
#include <sys/socket.h>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel::testing {

PacketHeader hdr(std::uint32_t proc, PacketType type, std::uint32_t serial, PacketStatus status,
                 std::uint32_t program) {
  return PacketHeader{0,
                      program,
                      1,
                      proc,
                      static_cast<std::uint32_t>(type),
                      serial,
                      static_cast<std::uint32_t>(status)};
}

bool RawPeer::send(PacketHeader h, const Bytes& body) {
  const Bytes p = make_packet(h, body);
  return ::send(fd_.get(), p.data(), p.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(p.size());
}

void RawPeer::send_raw(const Bytes& bytes) {
  ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
}

std::optional<Packet> RawPeer::read_packet(std::chrono::milliseconds timeout) {
  for (;;) {
    Result<std::optional<Frame>> d = decode_packet(inbox_);
    if (!d) return std::nullopt;
    if (*d) {
      Packet p{(*d)->header, Bytes((*d)->body.begin(), (*d)->body.end())};
      inbox_.erase(inbox_.begin(), inbox_.begin() + static_cast<long>((*d)->consumed));
      return p;
    }
    pollfd pfd{fd_.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
    std::uint8_t buf[65536];
    const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n <= 0) return std::nullopt;
    inbox_.insert(inbox_.end(), buf, buf + n);
  }
}

bool RawPeer::sees_eof(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    pollfd pfd{fd_.get(), POLLIN, 0};
    if (::poll(&pfd, 1, 50) > 0) {
      std::uint8_t buf[4096];
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n <= 0) return true;
    }
  }
  return false;
}

}  // namespace nbdtunnel::tunnel::testing
