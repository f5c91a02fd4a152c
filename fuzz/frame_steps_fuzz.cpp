// FrameSteps (the splice-mode receive rules) driven like the FrameReader drives it, with read
// sizes, "can this stream splice now" answers and streams vanishing mid-payload all taken from
// the input:
//   input = limit (1 byte) | n (1 byte) | n control bytes | the channel's byte stream
// The packets it reports must be exactly those decode_packet finds in the same bytes, a bad
// length word must be refused as soon as its 4 bytes are in, a payload goes to splice only when
// spliceable and allowed, and every step asks for at least one byte.
#include <algorithm>
#include <vector>

#include "fuzz/fuzz_check.hpp"
#include "tunnel/frame_steps.hpp"
#include "tunnel/packet.hpp"

namespace {

using namespace nbdtunnel::tunnel;
using nbdtunnel::fuzz::ByteSource;
using Kind = FrameSteps::Kind;
using Event = FrameSteps::Event;

// What decode_packet makes of the stream, packet by packet: the reference.
struct Expected {
  std::vector<Frame> frames;
  std::size_t end = 0;         // offset after the last whole packet
  bool framing_error = false;  // the packet at `end` has a bad length word
};

Expected reference(std::span<const std::uint8_t> stream, std::size_t max_packet) {
  Expected e;
  while (true) {
    Result<std::optional<Frame>> f = decode_packet(stream.subspan(e.end), max_packet);
    if (!f) {
      e.framing_error = true;
      return e;
    }
    if (!*f) return e;
    e.frames.push_back(**f);
    e.end += (*f)->consumed;
  }
}

// Cycles through the control bytes: read sizes and decisions.
class Controls {
 public:
  explicit Controls(std::span<const std::uint8_t> c) : c_(c) {}
  std::uint8_t next() { return c_.empty() ? 0 : c_[i_++ % c_.size()]; }
  // 1..64 bytes mostly; now and then everything the step wants.
  std::size_t read_size(std::size_t want) {
    const std::uint8_t b = next();
    return b >= 0xf0 ? want : std::min<std::size_t>(want, 1 + b % 64);
  }

 private:
  std::span<const std::uint8_t> c_;
  std::size_t i_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ByteSource in({data, size});
  const std::uint8_t limit = in.byte();
  // The real limit, or a small one so that short inputs reach the over-the-limit path.
  const std::size_t max_packet = limit & 1 ? kMaxPacket : kPrefixSize + limit;
  Controls controls(in.take(in.byte()));
  const std::span<const std::uint8_t> stream = in.rest();
  const Expected expected = reference(stream, max_packet);

  FrameSteps steps(max_packet);
  std::vector<std::uint8_t> prefix;
  std::vector<std::uint8_t> body;
  std::size_t packet_start = 0;  // offset of the packet being read
  std::size_t packets = 0;       // whole packets seen
  std::size_t pos = 0;
  while (pos < stream.size()) {
    FUZZ_CHECK(steps.want() > 0);
    const std::size_t n = std::min(controls.read_size(steps.want()), stream.size() - pos);
    const std::span<const std::uint8_t> bytes = stream.subspan(pos, n);
    pos += n;
    if (steps.kind() == Kind::prefix) {
      const std::size_t had = prefix.size();
      prefix.insert(prefix.end(), bytes.begin(), bytes.end());
      Result<Event> ev = steps.on_prefix_bytes(prefix);
      if (!ev) {
        // Refused as soon as the length word is in, and only if decode_packet refuses it too.
        FUZZ_CHECK(had < kLengthSize && prefix.size() >= kLengthSize);
        FUZZ_CHECK(expected.framing_error && packet_start == expected.end);
        FUZZ_CHECK(packets == expected.frames.size());
        return 0;
      }
      if (*ev == Event::none) {
        FUZZ_CHECK(prefix.size() < kPrefixSize && steps.want() == kPrefixSize - prefix.size());
        continue;
      }
      FUZZ_CHECK(*ev == Event::header && prefix.size() == kPrefixSize && steps.want() == 0);
      const PacketHeader h = steps.header();
      FUZZ_CHECK(h.length >= kPrefixSize && h.length <= max_packet);
      if (packets < expected.frames.size()) FUZZ_CHECK(h == expected.frames[packets].header);
      const bool splice_ok = controls.next() & 1;
      prefix.clear();
      body.clear();
      if (steps.choose_body(splice_ok) == Event::packet) {
        FUZZ_CHECK(h.length == kPrefixSize && steps.kind() == Kind::prefix);
        FUZZ_CHECK(packets < expected.frames.size() && expected.frames[packets].body.empty());
        ++packets;
        packet_start = pos;
        continue;
      }
      FUZZ_CHECK(steps.want() == steps.body_size() && steps.want() == h.length - kPrefixSize);
      FUZZ_CHECK((steps.kind() == Kind::splice) == (splice_ok && FrameSteps::spliceable(h)));
      FUZZ_CHECK(steps.kind() == Kind::splice || steps.kind() == Kind::body);
      continue;
    }

    // Body, splice or discard: the bytes of one body.
    const Kind kind = steps.kind();
    FUZZ_CHECK(n <= steps.want());
    body.insert(body.end(), bytes.begin(), bytes.end());
    const Event ev = steps.on_bytes(n);
    if (ev == Event::none) {
      FUZZ_CHECK(steps.kind() == kind && steps.want() > 0);
      // The stream may go away between two pieces of its payload.
      if (kind == Kind::splice && (controls.next() & 0x0c) == 0x0c) {
        steps.abandon_splice();
        FUZZ_CHECK(steps.kind() == Kind::discard);
      }
      continue;
    }
    FUZZ_CHECK(ev == (kind == Kind::body ? Event::packet : Event::payload_done));
    FUZZ_CHECK(steps.kind() == Kind::prefix && steps.want() == kPrefixSize);
    FUZZ_CHECK(packets < expected.frames.size());
    const Frame& frame = expected.frames[packets];
    FUZZ_CHECK(std::equal(body.begin(), body.end(), frame.body.begin(), frame.body.end()));
    ++packets;
    packet_start = pos;
  }
  // Out of bytes: every whole packet was seen, and nothing more.
  FUZZ_CHECK(!expected.framing_error && packets == expected.frames.size());
  FUZZ_CHECK(packet_start == expected.end);
  return 0;
}
