#pragma once
// Whether a role's channel runs under TLS, and with which credentials: the safe-defaults rule.
// With TLS credentials (--tls-dir, or the default directory when it holds the role's files) the
// channel is TLS. Without them it is plain, which is allowed on loopback only: anything else
// needs --insecure, the operator's statement that the network is trusted.

#include <string>
#include <vector>

#include "tunnel/result.hpp"
#include "tunnel/tls_context.hpp"

namespace nbdtunnel::engine {

// Where libvirt and QEMU keep their migration certificates; used when it holds the right files.
inline constexpr const char* kDefaultTlsDir = tunnel::TlsContext::kDefaultDir;

enum class TlsSide { dest, source };

// What the command line says (the same options on dest, source and migrate).
struct TlsArgs {
  std::string dir;                      // --tls-dir
  std::vector<std::string> allowed_dn;  // --tls-allowed-dn (dest)
  std::string hostname;                 // --tls-hostname (source, migrate)
  bool no_tls = false;                  // --no-tls
  bool insecure = false;                // --insecure
};

struct ChannelSecurity {
  bool tls = false;
  std::string dir;  // TLS: the credentials directory
  std::vector<std::string> allowed_dn;
  std::string verify_host;  // source side: the name the server certificate must carry
  bool defaulted = false;   // TLS because the default directory held credentials
};

// The files the side needs in a credentials directory.
std::vector<std::string> tls_files(TlsSide side);
// Whether dir holds every file the side needs.
bool tls_files_present(const std::string& dir, TlsSide side);

// Decides for a side that listens on (dest) or dials (source) host. default_dir is
// kDefaultTlsDir but for tests. An input_error naming the options to use when refused.
tunnel::Result<ChannelSecurity> choose_security(const TlsArgs& args, TlsSide side,
                                                const std::string& host,
                                                const std::string& default_dir = kDefaultTlsDir);

}  // namespace nbdtunnel::engine
