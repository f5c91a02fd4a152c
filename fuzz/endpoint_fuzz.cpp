// parse_endpoint (tunnel/endpoint.hpp) on arbitrary text: it refuses with a message, or returns
// a host and port that Endpoint::to_string() writes back in a form that parses to the same.
#include <string>

#include "fuzz/fuzz_check.hpp"
#include "tunnel/endpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nbdtunnel::tunnel;
  const std::string text = nbdtunnel::fuzz::as_string({data, size});
  Result<Endpoint> ep = parse_endpoint(text);
  if (!ep) {
    FUZZ_CHECK(!ep.error().message.empty());
    FUZZ_CHECK(ep.error().code == std::make_error_code(std::errc::invalid_argument));
    return 0;
  }
  FUZZ_CHECK(!ep->host.empty());
  Result<Endpoint> again = parse_endpoint(ep->to_string());
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->host == ep->host && again->port == ep->port);
  return 0;
}
