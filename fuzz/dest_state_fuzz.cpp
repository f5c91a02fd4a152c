// The state file of `dest --qmp` (engine/dest_state.*) on arbitrary bytes: refused with a
// message, or every record within the limits the recovery relies on (migration ids valid, export
// ids named nbdtunnel-*, absolute paths), and what it encodes parses back equal.
#include "engine/dest_state.hpp"
#include "engine/migration_protocol.hpp"
#include "fuzz/fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nbdtunnel::engine;
  const std::string text = nbdtunnel::fuzz::as_string({data, size});
  auto parsed = parse_dest_state(text);
  if (!parsed) {
    FUZZ_CHECK(!parsed.error().message.empty());
    return 0;
  }
  FUZZ_CHECK(text.size() <= kMaxDestStateBytes);
  for (const DestRecord& r : parsed->migrations) {
    FUZZ_CHECK(valid_migration_id(r.migration_id));
    FUZZ_CHECK(!r.server_socket.empty() || !r.exports.empty());
    FUZZ_CHECK(r.server_socket.empty() || r.server_socket.front() == '/');
    for (const std::string& e : r.exports) FUZZ_CHECK(valid_dest_export_id(e));
  }
  auto again = parse_dest_state(encode_dest_state(*parsed));
  FUZZ_CHECK(again && *again == *parsed);
  return 0;
}
