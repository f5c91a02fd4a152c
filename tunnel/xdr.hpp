#pragma once
// XDR (RFC 4506) encoding and bounded decoding, as used by libvirt's RPC protocol.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tunnel/result.hpp"

namespace nbdtunnel::tunnel {

// Appends XDR items to a byte vector. Never fails.
class XdrWriter {
 public:
  explicit XdrWriter(std::vector<std::uint8_t>& out) : out_(out) {}

  void u32(std::uint32_t v);
  void i32(std::int32_t v) { u32(static_cast<std::uint32_t>(v)); }
  void u64(std::uint64_t v);
  // Variable-length string: length, bytes, zero padding to 4.
  void string(std::string_view s);
  // Optional string (`string*` in XDR): a presence flag, then the string if present.
  void optional_string(const std::optional<std::string>& s);
  // Fixed-length opaque data, padded to 4.
  void fixed_opaque(std::span<const std::uint8_t> bytes);

 private:
  void pad(std::size_t n);
  std::vector<std::uint8_t>& out_;
};

// Reads XDR items from a byte span. Every read is bounded; the first failure sticks, later reads
// return zero values, and error() says what went wrong (an input_error). Callers check ok() once
// at the end, e.g. `if (!r.finish("HELLO body")) return r.error();`.
class XdrReader {
 public:
  explicit XdrReader(std::span<const std::uint8_t> in) : in_(in) {}

  std::uint32_t u32();
  std::int32_t i32() { return static_cast<std::int32_t>(u32()); }
  std::uint64_t u64();
  // Reads a string of at most max_len bytes; longer or truncated input is an error.
  std::string string(std::size_t max_len);
  std::optional<std::string> optional_string(std::size_t max_len);
  void fixed_opaque(std::span<std::uint8_t> out);

  bool ok() const { return !error_; }
  // The first failure; only valid when !ok().
  const Error& error() const { return *error_; }
  std::size_t remaining() const { return in_.size() - pos_; }
  // Fails unless every byte was consumed: trailing bytes mean the peer and we disagree.
  bool finish(std::string_view what);

 private:
  bool take(std::size_t n, std::string_view what);
  void fail(std::string msg);

  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
  std::optional<Error> error_;
};

}  // namespace nbdtunnel::tunnel
