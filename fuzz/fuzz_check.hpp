#pragma once
// What every fuzz target shares: an invariant check that holds in every build type (assert()
// is compiled out in RelWithDebInfo, where the corpus replay runs), and the entry point's
// declaration.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

// Aborts with the failed condition, so libFuzzer (or the replay test) reports the input.
#define FUZZ_CHECK(cond)                                                                     \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace nbdtunnel::fuzz {

// Takes control values off the front of a fuzz input; returns 0 once it is used up.
class ByteSource {
 public:
  explicit ByteSource(std::span<const std::uint8_t> in) : in_(in) {}
  std::uint8_t byte() { return pos_ < in_.size() ? in_[pos_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() << 8 | byte()); }
  // The first n bytes not taken yet (fewer if fewer are left), consumed.
  std::span<const std::uint8_t> take(std::size_t n) {
    n = std::min(n, in_.size() - pos_);
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::span<const std::uint8_t> rest() { return take(in_.size() - pos_); }
  bool empty() const { return pos_ == in_.size(); }

 private:
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

inline std::string as_string(std::span<const std::uint8_t> in) {
  return std::string(reinterpret_cast<const char*>(in.data()), in.size());
}

}  // namespace nbdtunnel::fuzz
