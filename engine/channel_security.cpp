#include "engine/channel_security.hpp"

#include <fmt/format.h>

#include "tunnel/endpoint.hpp"
#include "tunnel/tls_context.hpp"

namespace nbdtunnel::engine {

std::vector<std::string> tls_files(TlsSide side) {
  if (side == TlsSide::dest) return {"ca-cert.pem", "server-cert.pem", "server-key.pem"};
  return {"ca-cert.pem", "client-cert.pem", "client-key.pem"};
}

bool tls_files_present(const std::string& dir, TlsSide side) {
  return tunnel::TlsContext::files_present(
      dir, side == TlsSide::dest ? tunnel::TlsRole::server : tunnel::TlsRole::client);
}

tunnel::Result<ChannelSecurity> choose_security(const TlsArgs& args, TlsSide side,
                                                const std::string& host,
                                                const std::string& default_dir) {
  const auto usage = [](std::string message) {
    return tunnel::input_error(std::move(message), std::errc::invalid_argument);
  };
  if (!args.dir.empty() && args.no_tls)
    return usage("--tls-dir and --no-tls contradict each other");
  if (!args.dir.empty() && args.insecure) {
    return usage("--insecure is for channels without TLS; it has no place with --tls-dir");
  }
  ChannelSecurity s;
  if (!args.dir.empty()) {
    s.tls = true;
    s.dir = args.dir;
  } else if (!args.no_tls && tls_files_present(default_dir, side)) {
    s.tls = true;
    s.dir = default_dir;
    s.defaulted = true;
  }
  if (s.tls) {
    s.allowed_dn = args.allowed_dn;
    s.verify_host = args.hostname.empty() ? host : args.hostname;
    return s;
  }
  if (!args.allowed_dn.empty()) return usage("--tls-allowed-dn needs TLS (--tls-dir DIR)");
  if (!args.hostname.empty()) return usage("--tls-hostname needs TLS (--tls-dir DIR)");
  if (!tunnel::is_loopback(host) && !args.insecure) {
    std::string files;
    for (const std::string& f : tls_files(side)) files += (files.empty() ? "" : ", ") + f;
    if (side == TlsSide::dest) {
      return usage(fmt::format(
          "refusing to accept unauthenticated, unencrypted channels on '{}', which is not a "
          "loopback address: give --tls-dir DIR (holding {}; {} is used when it holds them), or "
          "--insecure if every host that can reach this port is trusted",
          host, files, default_dir));
    }
    return usage(fmt::format(
        "refusing to carry disk and memory data unencrypted to '{}', which is not a loopback "
        "address: give --tls-dir DIR (holding {}; {} is used when it holds them), or --insecure "
        "if the network between the hosts is trusted",
        host, files, default_dir));
  }
  return s;
}

}  // namespace nbdtunnel::engine
