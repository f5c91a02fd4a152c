// The engine's body decoders (engine/migration_protocol.hpp) on the same arbitrary bytes:
// PREPARE, the PREPARE reply, FINISH. Each either refuses with a message or returns a body
// within the limits (at most kMaxDisks disks, valid migration ids), and decode(encode(x)) == x.
#include "engine/migration_protocol.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

using namespace nbdtunnel::engine;
using nbdtunnel::tunnel::Result;

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

  if (Result<Prepare> p = decode_prepare(in); !refused(p)) {
    FUZZ_CHECK(valid_migration_id(p->migration_id));
    FUZZ_CHECK(!p->disks.empty() && p->disks.size() <= kMaxDisks);
    for (const PrepareDisk& d : p->disks) {
      FUZZ_CHECK(d.node.size() <= nbdtunnel::tunnel::kMaxTargetNameLen);
    }
    round_trip(*p, encode_prepare, decode_prepare);
  }
  if (Result<PrepareResult> r = decode_prepare_result(in); !refused(r)) {
    FUZZ_CHECK(r->disks.size() <= kMaxDisks);
    round_trip(*r, encode_prepare_result, decode_prepare_result);
  }
  if (Result<Finish> f = decode_finish(in); !refused(f)) {
    FUZZ_CHECK(valid_migration_id(f->migration_id));
    round_trip(*f, encode_finish, decode_finish);
  }
  return 0;
}
