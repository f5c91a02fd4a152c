// Every body decoder of tunnel/protocol.hpp on the same arbitrary bytes: HELLO, OPEN_TUNNEL,
// STREAM_CREDIT, RESUME, ACK (and the RESUME reply), GOODBYE, remote_error. Each either refuses
// with a message or returns a body within the protocol's limits, and decode(encode(x)) == x.
#include "fuzz/fuzz_check.hpp"
#include "tunnel/protocol.hpp"

namespace {

using namespace nbdtunnel::tunnel;

template <class T, class Encode, class Decode>
void round_trip(const T& value, Encode encode, Decode decode) {
  std::vector<std::uint8_t> body;
  encode(body, value);
  FUZZ_CHECK(body.size() % 4 == 0);
  Result<T> again = decode(body);
  FUZZ_CHECK(again.ok() && *again == value);
}

template <class T>
bool refused(const Result<T>& r) {
  if (r) return false;
  FUZZ_CHECK(!r.error().message.empty());
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> in(data, size);

  if (Result<Hello> h = decode_hello(in); !refused(h)) {
    FUZZ_CHECK(h->host_id.size() <= kMaxHostIdLen && h->hostname.size() <= kMaxHostIdLen);
    FUZZ_CHECK(h->window >= kMinWindow && h->window <= kMaxWindow);
    FUZZ_CHECK(h->max_payload >= 1 && h->max_payload <= kMaxStreamPayload);
    round_trip(*h, encode_hello, decode_hello);
  }
  if (Result<OpenTunnel> o = decode_open_tunnel(in); !refused(o)) {
    FUZZ_CHECK(!o->target.empty() && o->target.size() <= kMaxTargetNameLen);
    round_trip(*o, encode_open_tunnel, decode_open_tunnel);
  }
  if (Result<std::uint32_t> c = decode_credit(in); !refused(c)) {
    FUZZ_CHECK(size == 4);
    round_trip(*c, encode_credit, decode_credit);
  }
  if (Result<ResumeRequest> q = decode_resume_request(in); !refused(q)) {
    FUZZ_CHECK(size == 16 + 32 + 8);
    round_trip(*q, encode_resume_request, decode_resume_request);
  }
  if (Result<std::uint64_t> n = decode_received(in); !refused(n)) {
    FUZZ_CHECK(size == 8);
    round_trip(*n, encode_received, decode_received);
  }
  if (Result<std::string> g = decode_goodbye(in); !refused(g)) {
    FUZZ_CHECK(g->size() <= kMaxStringLen);
    round_trip(*g, encode_goodbye, decode_goodbye);
  }
  if (Result<RemoteError> e = decode_remote_error(in); !refused(e)) {
    for (const auto* s : {&e->message, &e->str1, &e->str2, &e->str3}) {
      FUZZ_CHECK(!*s || (*s)->size() <= kMaxStringLen);
    }
    round_trip(*e, encode_remote_error, decode_remote_error);
  }
  return 0;
}
