#pragma once
// The splice-mode receive rules as a pure state machine: which bytes of the channel the reader
// asks for next, decided only from the state and the bytes and headers seen so far. No I/O; the
// FrameReader performs each step. docs/FRAME-READER.md states the rules in prose.
//
//   prefix  --28 bytes, length ok-->  (empty body: packet ready) prefix
//                                     (STREAM CONTINUE its stream can splice now) splice
//                                     (anything else) body
//   body    --all body bytes-->       packet ready, prefix
//   splice  --all payload bytes-->    prefix      (stream gone meanwhile: discard the rest)
//   discard --all remaining bytes-->  prefix
// A bad length word is refused as soon as its 4 bytes are in.

#include <cstddef>
#include <cstdint>
#include <span>

#include "tunnel/protocol.hpp"
#include "tunnel/result.hpp"

namespace nbdtunnel::tunnel {

class FrameSteps {
 public:
  enum class Kind { prefix, body, splice, discard };
  // What a step's bytes completed.
  enum class Event {
    none,          // the step wants more bytes
    header,        // prefix complete: call choose_body()
    packet,        // a packet (header() and the body bytes read) is complete
    payload_done,  // a spliced or discarded payload is complete
  };

  explicit FrameSteps(std::size_t max_packet = kMaxPacket) : max_packet_(max_packet) {}

  Kind kind() const { return kind_; }
  // Bytes the current step still needs.
  std::size_t want() const { return want_; }
  // The packet being read (valid from Event::header until the next prefix completes).
  const PacketHeader& header() const { return header_; }
  std::size_t body_size() const { return header_.length - kPrefixSize; }
  // Whether a packet with this header is one whose body may go straight into a stream's pipe.
  static bool spliceable(const PacketHeader& h);

  // Prefix step: n more bytes arrived; `prefix` is every prefix byte so far (n included).
  Result<Event> on_prefix_bytes(std::span<const std::uint8_t> prefix);
  // After Event::header: splice_ok says the stream named by a spliceable header can take the
  // whole body by splice now. Returns Event::packet at once for an empty body.
  Event choose_body(bool splice_ok);
  // Body, splice or discard step: n more bytes arrived (n <= want()).
  Event on_bytes(std::size_t n);
  // Splice step: the target stream went away; the rest of the payload is dropped.
  void abandon_splice();

 private:
  void to_prefix();

  std::size_t max_packet_;
  Kind kind_ = Kind::prefix;
  std::size_t want_ = kPrefixSize;
  PacketHeader header_{};
};

}  // namespace nbdtunnel::tunnel
