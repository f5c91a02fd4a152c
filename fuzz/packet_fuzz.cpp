// decode_packet, decode_prefix and check_header on arbitrary bytes, read as copy mode reads a
// buffer: every complete packet in turn. Each packet must lie inside the input, agree with
// decode_prefix, and be rebuilt byte for byte by make_packet; a framing error must come from a
// bad length word, and be seen by decode_prefix too.
#include <algorithm>

#include "fuzz/fuzz_check.hpp"
#include "tunnel/packet.hpp"

namespace {

using namespace nbdtunnel::tunnel;

void check_packets(std::span<const std::uint8_t> in, std::size_t max_packet) {
  while (true) {
    Result<std::optional<Frame>> f = decode_packet(in, max_packet);
    Result<std::optional<Frame>> p = decode_prefix(in, max_packet);
    if (!f) {
      FUZZ_CHECK(in.size() >= kLengthSize && !f.error().message.empty());
      FUZZ_CHECK(f.error().code == std::make_error_code(std::errc::bad_message));
      FUZZ_CHECK(!p);  // the same length word, refused as soon as it is in
      return;
    }
    FUZZ_CHECK(p.ok());
    if (!*f) {
      // Needs more: fewer than 4 bytes, or fewer than the length word announces.
      if (in.size() >= kLengthSize) {
        const std::uint32_t length = std::uint32_t{in[0]} << 24 | std::uint32_t{in[1]} << 16 |
                                     std::uint32_t{in[2]} << 8 | in[3];
        FUZZ_CHECK(length > in.size());
        FUZZ_CHECK(in.size() < kPrefixSize ? !*p : (*p && (*p)->header.length == length));
      } else {
        FUZZ_CHECK(!*p);
      }
      return;
    }
    const Frame& frame = **f;
    FUZZ_CHECK(frame.consumed >= kPrefixSize && frame.consumed <= max_packet);
    FUZZ_CHECK(frame.consumed <= in.size() && frame.consumed == frame.header.length);
    FUZZ_CHECK(frame.body.size() == frame.consumed - kPrefixSize);
    FUZZ_CHECK(frame.body.data() == in.data() + kPrefixSize);
    FUZZ_CHECK(*p && (*p)->header == frame.header && (*p)->consumed == kPrefixSize);
    FUZZ_CHECK((*p)->body.empty());

    // Encoding what decoded gives the same bytes back.
    const std::vector<std::uint8_t> rebuilt = make_packet(frame.header, frame.body);
    FUZZ_CHECK(std::equal(rebuilt.begin(), rebuilt.end(), in.begin(), in.begin() + frame.consumed));
    FUZZ_CHECK(rebuilt.size() == frame.consumed);

    const bool known = frame.header.type <= 3 && frame.header.status <= 2;
    const Status s = check_header(frame.header);
    FUZZ_CHECK(s.ok() == known);
    if (!s) FUZZ_CHECK(!s.error().message.empty());
    FUZZ_CHECK((std::string(type_name(frame.header.type)) != "UNKNOWN") ==
               (frame.header.type <= 3));
    FUZZ_CHECK(!procedure_name(frame.header.program, frame.header.procedure).empty());
    in = in.subspan(frame.consumed);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> in(data, size);
  check_packets(in, kMaxPacket);
  // A small limit as well, so that short inputs reach the over-the-limit path.
  check_packets(in, kPrefixSize + 64);
  return 0;
}
