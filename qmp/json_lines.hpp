#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace nbdtunnel::qmp {

// Splits a byte stream into newline-terminated lines (QMP sends one JSON document per line).
// I/O-free: feed() bytes as they arrive, then call next() until it reports need_more.
// A line longer than max_line bytes is an error; errors are sticky until reset().
class JsonLineSplitter {
 public:
  static constexpr std::size_t kDefaultMaxLine = 16 * 1024 * 1024;

  enum class Status { line, need_more, error };

  struct Result {
    Status status = Status::need_more;
    std::string text;  // the line without "\n" / "\r\n" (line), or what went wrong (error)
  };

  explicit JsonLineSplitter(std::size_t max_line = kDefaultMaxLine) : max_line_(max_line) {}

  void feed(std::span<const char> bytes);
  Result next();

  // Drops buffered bytes and clears a sticky error.
  void reset();

  // Bytes fed but not yet returned as lines.
  std::size_t buffered() const { return buf_.size() - start_; }
  std::size_t max_line() const { return max_line_; }

 private:
  Result fail(std::string message);

  std::size_t max_line_;
  std::string buf_;
  std::size_t start_ = 0;    // first byte of the next line
  std::size_t scanned_ = 0;  // bytes after start_ already known to hold no '\n'
  std::string error_;        // non-empty once failed
};

}  // namespace nbdtunnel::qmp
