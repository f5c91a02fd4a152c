#include "qmp/json_lines.hpp"

#include <fmt/format.h>

namespace nbdtunnel::qmp {

void JsonLineSplitter::feed(std::span<const char> bytes) {
  if (!error_.empty()) return;
  // Compact lazily so a long run of short lines costs amortised O(n).
  if (start_ > 0 && start_ * 2 >= buf_.size()) {
    buf_.erase(0, start_);
    start_ = 0;
  }
  buf_.append(bytes.data(), bytes.size());
}

JsonLineSplitter::Result JsonLineSplitter::next() {
  if (!error_.empty()) return {Status::error, error_};
  while (true) {
    const auto nl = buf_.find('\n', start_ + scanned_);
    if (nl == std::string::npos) {
      scanned_ = buf_.size() - start_;
      // Refuse only a line that can no longer end within the limit: one of max_line_ bytes
      // may still end in "\r\n", so its '\r' may be in before its '\n' is.
      if (scanned_ > max_line_ + 1 || (scanned_ == max_line_ + 1 && buf_.back() != '\r')) {
        return fail(fmt::format("QMP line exceeds the {} byte limit ({} bytes without a newline)",
                                max_line_, scanned_));
      }
      return {Status::need_more, {}};
    }
    std::size_t len = nl - start_;
    if (len > 0 && buf_[nl - 1] == '\r') --len;
    if (len > max_line_) {
      return fail(fmt::format("QMP line of {} bytes exceeds the {} byte limit", len, max_line_));
    }
    std::string line = buf_.substr(start_, len);
    start_ = nl + 1;
    scanned_ = 0;
    if (start_ == buf_.size()) {
      buf_.clear();
      start_ = 0;
    }
    if (!line.empty()) return {Status::line, std::move(line)};
    // Blank lines carry nothing; skip them.
  }
}

void JsonLineSplitter::reset() {
  buf_.clear();
  start_ = 0;
  scanned_ = 0;
  error_.clear();
}

JsonLineSplitter::Result JsonLineSplitter::fail(std::string message) {
  error_ = std::move(message);
  buf_.clear();
  start_ = 0;
  scanned_ = 0;
  return {Status::error, error_};
}

}  // namespace nbdtunnel::qmp
