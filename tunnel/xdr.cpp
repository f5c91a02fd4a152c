#include "tunnel/xdr.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace nbdtunnel::tunnel {

namespace {
constexpr std::size_t padded(std::size_t n) {
  return (n + 3) & ~std::size_t{3};
}
}  // namespace

void XdrWriter::u32(std::uint32_t v) {
  const std::uint8_t b[4] = {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
                             static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
  out_.insert(out_.end(), b, b + 4);
}

void XdrWriter::u64(std::uint64_t v) {
  u32(static_cast<std::uint32_t>(v >> 32));
  u32(static_cast<std::uint32_t>(v));
}

void XdrWriter::pad(std::size_t n) {
  out_.insert(out_.end(), padded(n) - n, 0);
}

void XdrWriter::string(std::string_view s) {
  u32(static_cast<std::uint32_t>(s.size()));
  out_.insert(out_.end(), s.begin(), s.end());
  pad(s.size());
}

void XdrWriter::optional_string(const std::optional<std::string>& s) {
  u32(s ? 1 : 0);
  if (s) string(*s);
}

void XdrWriter::fixed_opaque(std::span<const std::uint8_t> bytes) {
  out_.insert(out_.end(), bytes.begin(), bytes.end());
  pad(bytes.size());
}

void XdrReader::fail(std::string msg) {
  if (!error_) error_ = input_error(std::move(msg));
}

bool XdrReader::take(std::size_t n, std::string_view what) {
  if (!ok()) return false;
  if (remaining() < n) {
    fail(fmt::format("truncated XDR {}: need {} bytes, {} left", what, n, remaining()));
    return false;
  }
  return true;
}

std::uint32_t XdrReader::u32() {
  if (!take(4, "integer")) return 0;
  const std::uint8_t* p = in_.data() + pos_;
  pos_ += 4;
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

std::uint64_t XdrReader::u64() {
  const std::uint64_t hi = u32();
  return (hi << 32) | u32();
}

std::string XdrReader::string(std::size_t max_len) {
  const std::uint32_t len = u32();
  if (!ok()) return {};
  if (len > max_len) {
    fail(fmt::format("XDR string of {} bytes exceeds the limit of {}", len, max_len));
    return {};
  }
  if (!take(padded(len), "string")) return {};
  std::string s(reinterpret_cast<const char*>(in_.data() + pos_), len);
  pos_ += padded(len);
  return s;
}

std::optional<std::string> XdrReader::optional_string(std::size_t max_len) {
  const std::uint32_t present = u32();
  if (!ok()) return std::nullopt;
  if (present > 1) {
    fail(fmt::format("XDR optional flag is {}, expected 0 or 1", present));
    return std::nullopt;
  }
  if (present == 0) return std::nullopt;
  return string(max_len);
}

void XdrReader::fixed_opaque(std::span<std::uint8_t> out) {
  if (!take(padded(out.size()), "opaque")) return;
  // std::copy, not memcpy: an empty span's data() may be null, which memcpy must not get.
  std::copy_n(in_.data() + pos_, out.size(), out.data());
  pos_ += padded(out.size());
}

bool XdrReader::finish(std::string_view what) {
  if (ok() && remaining() != 0) {
    fail(fmt::format("{} has {} unexpected trailing bytes", what, remaining()));
  }
  return ok();
}

}  // namespace nbdtunnel::tunnel
