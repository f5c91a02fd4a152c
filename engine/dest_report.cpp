// DestServer::describe: what `nbdtunnel status` shows of one daemon thread.
#include <chrono>

#include "engine/dest_server.hpp"

namespace nbdtunnel::engine {

using nlohmann::json;

namespace {

const char* state_name(tunnel::Stream::State s) {
  switch (s) {
    case tunnel::Stream::State::opening:
      return "opening";
    case tunnel::Stream::State::open:
      return "open";
    case tunnel::Stream::State::closed:
      return "closed";
  }
  return "unknown";
}

}  // namespace

json DestServer::describe() const {
  const auto now = std::chrono::steady_clock::now();
  json channels = json::array();
  for (const auto& [raw, connection] : channels_) {
    const tunnel::Channel& ch = *raw;
    json streams = json::array();
    for (const tunnel::Stream* s : ch.open_streams()) {
      streams.push_back({{"serial", s->serial()},
                         {"target", s->target()},
                         {"state", state_name(s->state())},
                         {"bytes_received", s->bytes_received()},
                         {"bytes_sent", s->bytes_sent()}});
    }
    json migrations = json::array();
    for (const std::string& id : migrations_.owned_by(ch)) {
      migrations.push_back({{"id", id}, {"kind", "qmp"}});
    }
    for (const std::string& id : libvirt_.owned_by(ch)) {
      migrations.push_back({{"id", id}, {"kind", "libvirt"}});
    }
    const tunnel::Hello& hello = ch.peer_hello();
    channels.push_back({{"peer", connection.peer},
                        {"host", hello.hostname},
                        {"host_id", hello.host_id},
                        {"state", ch.closing() ? "closing"
                                  : ch.ready() ? "ready"
                                               : "handshake"},
                        {"tls", options_.tls != nullptr},
                        {"age", std::chrono::duration<double>(now - connection.since).count()},
                        {"streams", std::move(streams)},
                        {"migrations", std::move(migrations)}});
  }
  return {{"listen", bound_}, {"channels", std::move(channels)}};
}

}  // namespace nbdtunnel::engine
