// The control socket's request parser (engine/control_command.hpp) on arbitrary lines, and the
// reply the server then builds and sends: the parser must never throw, a command it accepts is
// a string with object arguments, and the reply (the id echoed, invalid UTF-8 replaced) must
// serialise as ControlServer sends it.
#include <string>

#include "engine/control_command.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

using nbdtunnel::engine::ControlCommand;
using nlohmann::json;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string line = nbdtunnel::fuzz::as_string({data, size});
  ControlCommand command;
  json reply;
  if (nbdtunnel::engine::parse_control_command(line, command, reply)) {
    FUZZ_CHECK(command.arguments.is_object());
    reply = {{"return", command.arguments}};
  } else {
    // Compared as std::string: json == "literal" trips a false GCC 12 -O3 array-bounds error.
    const json& error_class = reply["error"]["class"];
    FUZZ_CHECK(error_class.is_string() && error_class.get<std::string>() == "GenericError");
    FUZZ_CHECK(!reply["error"]["desc"].get<std::string>().empty());
  }
  if (command.id) reply["id"] = std::move(*command.id);
  const std::string text = reply.dump(-1, ' ', false, json::error_handler_t::replace);
  FUZZ_CHECK(!text.empty() && text.find('\n') == std::string::npos);
  return 0;
}
