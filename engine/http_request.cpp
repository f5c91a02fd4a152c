#include "engine/http_request.hpp"

#include <algorithm>

namespace nbdtunnel::engine {

namespace {

HttpRequest bad(int code, std::string reason) {
  HttpRequest r;
  r.status = HttpRequest::Status::bad;
  r.code = code;
  r.reason = std::move(reason);
  return r;
}

bool is_tchar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// A control byte other than tab (CR and LF are taken apart before this is asked).
bool is_control(char c) {
  const auto u = static_cast<unsigned char>(c);
  return (u < 0x20 && c != '\t') || u == 0x7f;
}

// One line without its CR, if it had one.
std::string_view strip_cr(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

HttpRequest parse_request_line(std::string_view line) {
  if (std::any_of(line.begin(), line.end(), is_control)) {
    return bad(400, "control character in the request line");
  }
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == 0 || sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != line.npos) {
    return bad(400, "the request line is not METHOD TARGET HTTP/1.x");
  }
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!std::all_of(method.begin(), method.end(), is_tchar)) return bad(400, "bad method");
  if (version.size() != 8 || version.substr(0, 7) != "HTTP/1." || version[7] < '0' ||
      version[7] > '9') {
    return bad(version.substr(0, 5) == "HTTP/" ? 505 : 400, "only HTTP/1.x is served");
  }
  if (method != "GET" && method != "HEAD") return bad(405, "only GET /metrics is served");
  const std::string_view path = target.substr(0, target.find('?'));
  if (path != "/metrics") return bad(404, "only /metrics is served");
  HttpRequest r;
  r.head = method == "HEAD";
  return r;
}

}  // namespace

HttpRequest parse_http_request(std::string_view bytes) {
  const std::string_view window = bytes.substr(0, kMaxHttpHead);
  const std::size_t first_lf = window.find('\n');
  if (first_lf == std::string_view::npos) {
    if (window.size() > kMaxHttpLine) return bad(414, "the request line is too long");
    if (std::any_of(window.begin(), window.end(), [](char c) { return c == '\0'; })) {
      return bad(400, "NUL in the request line");
    }
    return HttpRequest{};
  }
  if (first_lf > kMaxHttpLine) return bad(414, "the request line is too long");
  HttpRequest request = parse_request_line(strip_cr(window.substr(0, first_lf)));
  if (request.status == HttpRequest::Status::bad) return request;
  // Header lines up to the empty line; nothing in them changes the answer, but they must be sane.
  std::size_t pos = first_lf + 1;
  for (std::size_t headers = 0;; ++headers) {
    const std::size_t lf = window.find('\n', pos);
    if (lf == std::string_view::npos) {
      if (bytes.size() >= kMaxHttpHead) return bad(431, "the request head is too large");
      const std::string_view partial = window.substr(pos);
      if (std::any_of(partial.begin(), partial.end(), [](char c) { return c == '\0'; })) {
        return bad(400, "NUL in a header");
      }
      return HttpRequest{};
    }
    const std::string_view line = strip_cr(window.substr(pos, lf - pos));
    pos = lf + 1;
    if (line.empty()) break;
    if (headers >= kMaxHttpHeaders) return bad(431, "too many header lines");
    const std::size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos ||
        !std::all_of(line.begin(), line.begin() + static_cast<std::ptrdiff_t>(colon), is_tchar)) {
      return bad(400, "a header line is not NAME: VALUE");
    }
    if (std::any_of(line.begin(), line.end(), is_control)) {
      return bad(400, "control character in a header");
    }
  }
  request.status = HttpRequest::Status::ok;
  request.size = pos;
  return request;
}

const char* http_reason(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
  }
  return "Error";
}

}  // namespace nbdtunnel::engine
