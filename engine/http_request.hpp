#pragma once
// The request of a client of the metrics endpoint (`dest --metrics-listen`): an HTTP/1.0 or 1.1
// request head, read as far as that endpoint needs and no further. No I/O: the server feeds what
// it has read; the answer is need-more, a request for /metrics, or an error status to send.
//
//   request  = method SP target SP "HTTP/1." DIGIT CRLF *(header CRLF) CRLF   (bare LF accepted)
//   method   = "GET" | "HEAD"            (anything else: 405)
//   target   = "/metrics" [ "?" query ]  (anything else: 404)
//
// Bounds: the head is at most kMaxHttpHead bytes (431 beyond), the request line at most
// kMaxHttpLine (414), at most kMaxHttpHeaders header lines (431); a NUL or other control byte, a
// header line without ':' or a malformed request line is 400. A body is never read.

#include <cstddef>
#include <string>
#include <string_view>

namespace nbdtunnel::engine {

inline constexpr std::size_t kMaxHttpHead = 8192;
inline constexpr std::size_t kMaxHttpLine = 1024;
inline constexpr std::size_t kMaxHttpHeaders = 64;

struct HttpRequest {
  enum class Status { need_more, ok, bad };
  Status status = Status::need_more;
  int code = 0;          // bad: the HTTP status to answer with (400, 404, 405, 414, 431, 505)
  std::string reason;    // bad: why, for the response body
  bool head = false;     // ok: HEAD (answer without a body)
  std::size_t size = 0;  // ok: the bytes the head took
};

// Parses the bytes read so far from one connection.
HttpRequest parse_http_request(std::string_view bytes);

// The status line's reason phrase for the codes the endpoint sends.
const char* http_reason(int code);

}  // namespace nbdtunnel::engine
