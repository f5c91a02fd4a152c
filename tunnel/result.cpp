#include "tunnel/result.hpp"

#include <cstring>

namespace nbdtunnel::tunnel {

Error system_error(int err, std::string_view what) {
  std::string message(what);
  message += ": ";
  message += std::strerror(err);
  return Error{std::error_code(err, std::system_category()), std::move(message)};
}

Error input_error(std::string message, std::errc code) {
  return Error{std::make_error_code(code), std::move(message)};
}

}  // namespace nbdtunnel::tunnel
