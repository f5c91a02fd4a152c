// parse_http_request (engine/http_request.hpp), the metrics endpoint's parser, on arbitrary
// bytes: it answers need-more only below the size limit, refuses with a status it sends and a
// reason, and accepts only a head that ends in its empty line and parses the same on its own.
#include <set>
#include <string_view>

#include "engine/http_request.hpp"
#include "fuzz/fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nbdtunnel::engine;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const HttpRequest r = parse_http_request(bytes);
  switch (r.status) {
    case HttpRequest::Status::need_more:
      FUZZ_CHECK(size < kMaxHttpHead);
      break;
    case HttpRequest::Status::bad: {
      static const std::set<int> codes{400, 404, 405, 414, 431, 505};
      FUZZ_CHECK(codes.count(r.code) == 1);
      FUZZ_CHECK(!r.reason.empty());
      break;
    }
    case HttpRequest::Status::ok: {
      FUZZ_CHECK(r.size >= 4 && r.size <= size && r.size <= kMaxHttpHead);
      FUZZ_CHECK(bytes[r.size - 1] == '\n');
      FUZZ_CHECK(bytes.substr(0, 4) == "GET " || bytes.substr(0, 5) == "HEAD ");
      const HttpRequest alone = parse_http_request(bytes.substr(0, r.size));
      FUZZ_CHECK(alone.status == HttpRequest::Status::ok && alone.size == r.size);
      FUZZ_CHECK(parse_http_request(bytes.substr(0, r.size - 1)).status != HttpRequest::Status::ok);
      break;
    }
  }
  return 0;
}
