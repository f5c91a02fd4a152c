#include "tunnel/frame_steps.hpp"

#include <cassert>

#include "tunnel/packet.hpp"

namespace nbdtunnel::tunnel {

bool FrameSteps::spliceable(const PacketHeader& h) {
  return h.program == kProgram && h.type == static_cast<std::uint32_t>(PacketType::stream) &&
         h.status == static_cast<std::uint32_t>(PacketStatus::cont) && h.length > kPrefixSize;
}

void FrameSteps::to_prefix() {
  kind_ = Kind::prefix;
  want_ = kPrefixSize;
}

Result<FrameSteps::Event> FrameSteps::on_prefix_bytes(std::span<const std::uint8_t> prefix) {
  assert(kind_ == Kind::prefix && prefix.size() <= kPrefixSize);
  want_ = kPrefixSize - prefix.size();
  Result<std::optional<Frame>> d = decode_prefix(prefix, max_packet_);
  if (!d) return d.error();
  if (!*d) return Event::none;
  header_ = (*d)->header;
  return Event::header;
}

FrameSteps::Event FrameSteps::choose_body(bool splice_ok) {
  assert(kind_ == Kind::prefix && want_ == 0);
  want_ = body_size();
  if (want_ == 0) {
    to_prefix();
    return Event::packet;
  }
  kind_ = splice_ok && spliceable(header_) ? Kind::splice : Kind::body;
  return Event::none;
}

FrameSteps::Event FrameSteps::on_bytes(std::size_t n) {
  assert(kind_ != Kind::prefix && n <= want_);
  want_ -= n;
  if (want_ > 0) return Event::none;
  const Kind done = kind_;
  to_prefix();
  return done == Kind::body ? Event::packet : Event::payload_done;
}

void FrameSteps::abandon_splice() {
  assert(kind_ == Kind::splice);
  kind_ = Kind::discard;
}

}  // namespace nbdtunnel::tunnel
