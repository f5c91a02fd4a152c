// XdrReader on arbitrary bytes, driven by a program of reads taken from the input itself:
//   input = n (1 byte) | n op bytes | XDR data
// Each op byte reads one item (low 3 bits: which; the other 5: a limit or size). Whatever was
// read while the reader stayed ok is written again with XdrWriter; reading that back with the
// same ops must give the same values and consume exactly as many bytes as the original did.
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "fuzz/fuzz_check.hpp"
#include "tunnel/xdr.hpp"

namespace {

using nbdtunnel::fuzz::ByteSource;
using nbdtunnel::tunnel::XdrReader;
using nbdtunnel::tunnel::XdrWriter;

using Value = std::variant<std::uint32_t, std::int32_t, std::uint64_t, std::string,
                           std::optional<std::string>, std::vector<std::uint8_t>>;

// 0, 1, 2, ... 30 bytes, and the protocol's 4096 for 31.
std::size_t limit_of(std::uint8_t op) {
  const std::size_t arg = op >> 3;
  return arg == 31 ? 4096 : arg;
}

// Runs the ops; returns the values read before the first failure, and sets `consumed` to the
// bytes they took (a failed read may have taken some: a u64's first half, an optional's flag).
std::vector<Value> run(std::span<const std::uint8_t> ops, XdrReader& r, std::size_t& consumed) {
  const std::size_t size = r.remaining();
  consumed = 0;
  std::vector<Value> values;
  for (const std::uint8_t op : ops) {
    const std::size_t before = r.remaining();
    Value v;
    switch (op & 7) {
      case 0:
        v = r.u32();
        break;
      case 1:
        v = r.i32();
        break;
      case 2:
        v = r.u64();
        break;
      case 3:
      case 4: {
        std::string s = r.string(limit_of(op));
        FUZZ_CHECK(s.size() <= limit_of(op));
        v = std::move(s);
        break;
      }
      case 5:
      case 6: {
        std::optional<std::string> s = r.optional_string(limit_of(op));
        FUZZ_CHECK(!s || s->size() <= limit_of(op));
        v = std::move(s);
        break;
      }
      case 7: {
        std::vector<std::uint8_t> bytes(op >> 3);
        r.fixed_opaque(bytes);
        v = std::move(bytes);
        break;
      }
    }
    FUZZ_CHECK(r.remaining() <= before);
    if (!r.ok()) {
      // The failure sticks: later reads return zero values and consume nothing.
      FUZZ_CHECK(!r.error().message.empty());
      FUZZ_CHECK(r.u32() == 0 && r.u64() == 0 && r.string(4096).empty());
      FUZZ_CHECK(!r.optional_string(4096) && !r.finish("rest"));
      break;
    }
    values.push_back(std::move(v));
    consumed = size - r.remaining();
  }
  return values;
}

void write(XdrWriter& w, const Value& v) {
  std::visit(
      [&w](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::uint32_t>) {
          w.u32(x);
        } else if constexpr (std::is_same_v<T, std::int32_t>) {
          w.i32(x);
        } else if constexpr (std::is_same_v<T, std::uint64_t>) {
          w.u64(x);
        } else if constexpr (std::is_same_v<T, std::string>) {
          w.string(x);
        } else if constexpr (std::is_same_v<T, std::optional<std::string>>) {
          w.optional_string(x);
        } else {
          w.fixed_opaque(x);
        }
      },
      v);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ByteSource in({data, size});
  const std::span<const std::uint8_t> ops = in.take(in.byte());
  const std::span<const std::uint8_t> xdr = in.rest();

  XdrReader r(xdr);
  std::size_t consumed = 0;
  const std::vector<Value> values = run(ops, r, consumed);
  FUZZ_CHECK(consumed % 4 == 0);
  if (r.ok()) FUZZ_CHECK(r.finish("input") == (r.remaining() == 0));

  // decode(encode(x)) == x on every value that decoded.
  std::vector<std::uint8_t> encoded;
  XdrWriter w(encoded);
  for (const Value& v : values) write(w, v);
  FUZZ_CHECK(encoded.size() == consumed);
  XdrReader again(encoded);
  std::size_t reconsumed = 0;
  const std::vector<Value> reread = run(ops.first(values.size()), again, reconsumed);
  FUZZ_CHECK(again.ok() && again.remaining() == 0 && reconsumed == consumed);
  FUZZ_CHECK(reread == values);
  return 0;
}
