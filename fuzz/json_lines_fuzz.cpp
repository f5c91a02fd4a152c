// JsonLineSplitter (qmp/json_lines.hpp) on arbitrary bytes with a small line limit, fed twice:
// all at once, and in pieces whose sizes come from the input. How the bytes were cut must not
// change what comes out; the lines must be the input's lines (CRLF stripped, blank ones
// skipped, none over the limit); and what it buffers while waiting is bounded by the limit.
//   input = limit (1 byte) | n (1 byte) | n piece sizes | the stream
#include <algorithm>
#include <string>
#include <vector>

#include "fuzz/fuzz_check.hpp"
#include "qmp/json_lines.hpp"

namespace {

using nbdtunnel::fuzz::ByteSource;
using nbdtunnel::qmp::JsonLineSplitter;
using Status = JsonLineSplitter::Status;

struct Output {
  std::vector<std::string> lines;
  bool error = false;
  friend bool operator==(const Output&, const Output&) = default;
};

// Takes every line out; true once it reported need_more (false: error).
bool drain(JsonLineSplitter& s, Output& out) {
  while (true) {
    JsonLineSplitter::Result r = s.next();
    if (r.status == Status::need_more) {
      // Whatever waits for its newline could still become a line within the limit.
      FUZZ_CHECK(s.buffered() <= s.max_line() + 1);
      return true;
    }
    if (r.status == Status::error) {
      FUZZ_CHECK(!r.text.empty());
      FUZZ_CHECK(s.next().status == Status::error);  // sticky
      out.error = true;
      return false;
    }
    FUZZ_CHECK(!r.text.empty() && r.text.size() <= s.max_line());
    FUZZ_CHECK(r.text.find('\n') == std::string::npos);
    out.lines.push_back(std::move(r.text));
  }
}

// The rule in prose, written straight: lines end at '\n', one '\r' before it is dropped, blank
// lines are skipped, a line over the limit is an error, and so is an unfinished line that can
// no longer end within it.
Output model(const std::string& text, std::size_t max_line) {
  Output out;
  std::size_t start = 0;
  while (true) {
    const auto nl = text.find('\n', start);
    if (nl == std::string::npos) {
      const std::size_t left = text.size() - start;
      const bool may_end_in_crlf = left == max_line + 1 && text.back() == '\r';
      out.error = left > max_line && !may_end_in_crlf;
      return out;
    }
    std::string line = text.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > max_line) {
      out.error = true;
      return out;
    }
    if (!line.empty()) out.lines.push_back(std::move(line));
    start = nl + 1;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ByteSource in({data, size});
  const std::size_t max_line = 1 + in.byte() % 64;
  const std::span<const std::uint8_t> pieces = in.take(in.byte());
  const std::string text = nbdtunnel::fuzz::as_string(in.rest());

  JsonLineSplitter whole(max_line);
  Output at_once;
  whole.feed({text.data(), text.size()});
  drain(whole, at_once);

  JsonLineSplitter cut(max_line);
  Output in_pieces;
  for (std::size_t pos = 0, i = 0; pos < text.size(); ++i) {
    const std::size_t n = std::min<std::size_t>(
        text.size() - pos, pieces.empty() ? 1 : 1 + pieces[i % pieces.size()] % 80);
    cut.feed({text.data() + pos, n});
    pos += n;
    if (!drain(cut, in_pieces)) break;
  }

  FUZZ_CHECK(at_once == in_pieces);
  FUZZ_CHECK(at_once == model(text, max_line));

  // reset() forgets everything, the error included.
  cut.reset();
  FUZZ_CHECK(cut.buffered() == 0 && cut.next().status == Status::need_more);
  cut.feed({"x\n", 2});
  FUZZ_CHECK(cut.next().text == "x");
  return 0;
}
