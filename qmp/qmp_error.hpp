#pragma once

#include <stdexcept>
#include <string>

namespace nbdtunnel::qmp {

// A failed QMP interaction. The message says what failed, on which socket, and what to do.
struct QmpError : std::runtime_error {
  enum class Phase { connect, greeting, negotiation, execute, disconnect, timeout };

  QmpError(Phase p, const std::string& message, std::string cls = {})
      : std::runtime_error(message), phase(p), error_class(std::move(cls)) {}

  Phase phase;
  std::string error_class;  // QMP "class" of an error reply (e.g. "GenericError"), else empty
};

constexpr const char* to_string(QmpError::Phase phase) {
  switch (phase) {
    case QmpError::Phase::connect:
      return "connect";
    case QmpError::Phase::greeting:
      return "greeting";
    case QmpError::Phase::negotiation:
      return "negotiation";
    case QmpError::Phase::execute:
      return "execute";
    case QmpError::Phase::disconnect:
      return "disconnect";
    case QmpError::Phase::timeout:
      return "timeout";
  }
  return "unknown";
}

}  // namespace nbdtunnel::qmp
